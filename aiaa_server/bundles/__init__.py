"""MONAI bundles (`configs/metadata.json` + `configs/inference.json|yaml` + `models/model.pt|.ts|.pt2`) served
like MMARs: the bundle's own preprocessing, inferer, network and postprocessing, read with MONAI's
`ConfigParser`."""
