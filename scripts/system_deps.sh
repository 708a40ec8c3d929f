#!/usr/bin/env bash
# Debian packages vfe uses: the Fashion-MNIST data set (offline, in /usr/share/datasets) and
# headless Chromium (the report test renders report.html in it). Needs root + apt-get; otherwise
# says what is missing and carries on (vfe falls back to scikit-learn's digits).
set -u
need=()
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null \
        || echo "warning: apt-get could not install ${need[*]}" >&2
else
    echo "note: missing ${need[*]} and not root with apt-get." >&2
    echo "  Fashion-MNIST: 'sudo apt-get install dataset-fashion-mnist', or put the four IDX .gz files" >&2
    echo "  in ~/.cache/vfe/fashion-mnist (vfe run falls back to scikit-learn's digits meanwhile)." >&2
    echo "  Chromium: 'sudo apt-get install chromium' (needed by the report rendering test)." >&2
fi
exit 0
