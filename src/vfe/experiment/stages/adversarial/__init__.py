"""White-box attacks end to end through the backbone, with EOT for heads that sample and transfer and BPDA for
heads that adapt at test time."""
