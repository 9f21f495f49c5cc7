"""hone's reinforcement-learning floor. So far: the pure-function algorithms (advantages, KL, policy loss)."""
