"""The shipped models; installed as the package asidfe_phot._model_files (see pyproject.toml)."""
