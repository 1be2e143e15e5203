"""Active learning: oracles that label configurations, query strategies, the MD -> QM -> refit loop."""
