from setuptools import setup, find_packages

setup(
    name="nnunet_mona",
    version="0.1.0",
    description="Semi-supervised segmentation (Mean Teacher, MONA, ACTION, MixCL) as nnU-Net v2 trainers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["nnunet_mona", "nnunet_mona.*"]),
    # the shim folder has no __init__.py on purpose (nnUNet_extTrainer scans it as a plain folder)
    package_data={"nnunet_mona": ["ext_trainers/*.py"]},
    include_package_data=True,
    install_requires=[
        "nnunetv2>=2.8.1,<2.9",
        "torch>=2.1",
        "batchgenerators>=0.25",
        "batchgeneratorsv2>=0.3.6",
        "SimpleITK>=2.2",
        "numpy>=1.24",
        "acvl-utils>=0.2",
        "dynamic-network-architectures>=0.4.4",
        "matplotlib",
        "h5py",  # ACDC converter (SSL4MIS h5 format)
    ],
    extras_require={"test": ["pytest>=7", "pytest-xdist>=3"]},
    entry_points={
        "console_scripts": [
            "nnUNetv2_mona_env = nnunet_mona.cli.env_command:env_entry_point",
            "nnUNetv2_mona_preprocess_unlabeled = nnunet_mona.data.unlabeled_preprocessing:entry_point",
            "nnUNetv2_mona_make_splits = nnunet_mona.data.splits:entry_point",
            "nnUNetv2_mona_demo = nnunet_mona.demo.run_demo:entry_point",
            "nnUNetv2_mona_convert_acdc_h5 = nnunet_mona.conversion.acdc_h5:entry_point",
            "nnUNetv2_mona_convert_acdc = nnunet_mona.conversion.acdc_official:entry_point",
            "nnUNetv2_mona_benchmark = nnunet_mona.benchmark.run_benchmark:entry_point",
            "nnUNetv2_mona_scaling = nnunet_mona.benchmark.scaling:entry_point",
            "nnUNetv2_mona_evaluate = nnunet_mona.benchmark.evaluate:entry_point",
            "nnUNetv2_mona_pseudo_label = nnunet_mona.cli.pseudo_label_command:entry_point",
            "nnUNetv2_mona_check_folds = nnunet_mona.cli.check_folds:entry_point",
            "nnUNetv2_mona_gradient_shares = nnunet_mona.diagnostics.gradient_shares:entry_point",
            "nnUNetv2_mona_class_separation = nnunet_mona.diagnostics.separation_command:entry_point",
        ]
    },
)
