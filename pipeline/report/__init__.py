"""Result tables beside the papers' numbers, and the figures."""
