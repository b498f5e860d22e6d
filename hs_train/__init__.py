"""Training, fine-tuning, evaluation and experiments for the HS desk model; the app never imports this package."""
