"""Fed-IXI (FLamby's IXI-Tiny): T1 head MRI with brain masks from 3 London hospitals."""
