"""The CNI plugin `cilia-cni` and its installer."""
