"""Run configs, torch-free: the model configs and their default tables (`model.py`), the run
schema and its validation (`schema.py`), reading YAML files, presets and overrides (`source.py`,
presets in `presets/`), and sweep grids (`sweep.py`)."""
from models.config.model import AttentionConfig, HyenaConfig
from models.config.schema import (CheckpointConfig, DataConfig, EvalConfig, OptimizerConfig, RunConfig,
                                  ScheduleConfig, config_diff, config_hash, config_keys, config_yaml,
                                  model_build_dict, resolve_config, validate_config)
from models.config.source import apply_overrides, load_config, parse_yaml, preset_names, read_config_source

__all__ = ["AttentionConfig", "CheckpointConfig", "DataConfig", "EvalConfig", "HyenaConfig", "OptimizerConfig",
           "RunConfig", "ScheduleConfig", "apply_overrides", "config_diff", "config_hash", "config_keys",
           "config_yaml", "load_config", "model_build_dict", "parse_yaml", "preset_names", "read_config_source",
           "resolve_config", "validate_config"]
