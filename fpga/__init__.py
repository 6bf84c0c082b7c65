"""Board configurations shipped with Airfoil (package data: ``boards/<name>.yaml``, found
by :func:`airfoil.config.builtin_config_path`)."""
