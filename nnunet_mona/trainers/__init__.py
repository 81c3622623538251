"""nnU-Net trainer classes of nnunet_mona (re-exported by ext_trainers/ for nnU-Net's lookup)."""
