"""Load tests and benchmarks of FlashSale (`make loadtest`, `make bench`); not shipped."""
