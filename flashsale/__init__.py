"""FlashSale: settings, logging and the `flashsale` command line."""
