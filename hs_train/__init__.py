"""Training and evaluation side of HS desk (never imported by the app)."""
