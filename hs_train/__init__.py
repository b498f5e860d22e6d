"""Training and evaluation side: experiments and builders that the app never imports."""
