"""Training and evaluation side of HS desk (datasets, training, the assets it builds)."""
