"""How nnU-Net finds the nnunet_mona trainers: ``nnUNet_extTrainer`` pointing at the package's shim folder."""
import os
import sys

ENV_VAR = "nnUNet_extTrainer"


def ext_trainer_folder() -> str:
    """Absolute path of the shim folder that ``nnUNet_extTrainer`` must point at."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ext_trainers")


def ext_trainer_env_value(current: str = None) -> str:
    """Value for ``nnUNet_extTrainer``: our folder prepended to what is already set (no duplicates)."""
    current = os.environ.get(ENV_VAR, "") if current is None else current
    ours = ext_trainer_folder()
    others = [p for p in current.split(os.pathsep) if p.strip() and os.path.abspath(p) != ours]
    return os.pathsep.join([ours] + others)


def is_ext_trainer_configured() -> bool:
    current = os.environ.get(ENV_VAR, "")
    return ext_trainer_folder() in [os.path.abspath(p) for p in current.split(os.pathsep) if p.strip()]


def ext_trainer_hint() -> str:
    return (f"nnU-Net cannot find the nnunet_mona trainers: {ENV_VAR} does not point at "
            f"{ext_trainer_folder()}.\nFix it in this shell with:\n    eval \"$(nnUNetv2_mona_env)\"\n"
            f"(add that line to your ~/.bashrc to make it permanent).")


def configure_ext_trainer_in_process() -> None:
    """Set ``nnUNet_extTrainer`` for this process and its children (nnU-Net reads it lazily)."""
    os.environ[ENV_VAR] = ext_trainer_env_value()


def warn_if_ext_trainer_missing() -> bool:
    """Print how to fix the trainer lookup if it is not set up; returns True when it is fine."""
    if is_ext_trainer_configured():
        return True
    print("WARNING: " + ext_trainer_hint(), file=sys.stderr)
    return False
