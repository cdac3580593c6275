"""Ray Tune: the search space and the campaign runner."""
