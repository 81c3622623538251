"""``nnUNetv2_mona_env``: the shell line that lets the stock nnU-Net commands find the nnunet_mona trainers."""
import os
import sys

from nnunet_mona.cli.arguments import command_parser
from nnunet_mona.cli.ext_trainer import ENV_VAR, ext_trainer_env_value, warn_if_ext_trainer_missing


def env_entry_point(argv=None) -> None:
    parser = command_parser(
        "nnUNetv2_mona_env",
        "Print the shell line that lets nnUNetv2_train / nnUNetv2_predict find the nnunet_mona trainers. "
        "Use it as:  eval \"$(nnUNetv2_mona_env)\"")
    parser.add_argument("--check", action="store_true",
                        help="do not print the export line; exit 1 with a hint if the current shell is not set up")
    args = parser.parse_args(argv)
    if args.check:
        if warn_if_ext_trainer_missing():
            print(f"{ENV_VAR} is set up: {os.environ[ENV_VAR]}")
            return
        sys.exit(1)
    print(f"export {ENV_VAR}='{ext_trainer_env_value()}'")
