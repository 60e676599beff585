"""The shipped run-config presets: `NAME.yaml` here is the preset `NAME` (`hyenalens train NAME`).

A package only so that setuptools ships the YAML files as this package's data
(setup.cfg `[options.package_data]`) without warning; `models.config.source` reads them with
`importlib.resources.files("models.config.presets")`. No code lives here.
"""
