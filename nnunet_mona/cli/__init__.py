"""Command-line plumbing of the ``nnUNetv2_mona_*`` commands: the trainer lookup (``nnUNet_extTrainer``), the
shared parser / error handling, logged subprocesses, and the small commands that belong to no other package."""
from nnunet_mona.cli.ext_trainer import (ENV_VAR, configure_ext_trainer_in_process, ext_trainer_env_value,
                                         ext_trainer_folder, ext_trainer_hint, is_ext_trainer_configured,
                                         warn_if_ext_trainer_missing)

__all__ = ["ENV_VAR", "configure_ext_trainer_in_process", "ext_trainer_env_value", "ext_trainer_folder",
           "ext_trainer_hint", "is_ext_trainer_configured", "warn_if_ext_trainer_missing"]
