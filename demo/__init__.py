"""labtel.demo: simulated labs that make every screen come alive (`labtel demo`)."""
