"""What every stage shares: config, storage, runs, registry, jobs, Ray start-up; data/ and model/ below."""
