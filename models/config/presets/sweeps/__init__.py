"""The shipped sweep specs: `NAME.yaml` here is the sweep `NAME` (`hyenalens sweep NAME`).

A package only so that setuptools ships the YAML files as this package's data
(setup.cfg `[options.package_data]`) without warning; `models.config.sweep` reads them with
`importlib.resources.files("models.config.presets.sweeps")`. No code lives here.
"""
