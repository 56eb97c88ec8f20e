"""Business rules. Routes and commands call these; nothing here knows HTTP or the terminal."""
