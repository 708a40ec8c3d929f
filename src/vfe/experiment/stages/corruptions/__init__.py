"""The common-corruption stage: every corruption x severity of the test images (Hendrycks & Dietterich 2019),
and the test-time BatchNorm twins measured on them."""
