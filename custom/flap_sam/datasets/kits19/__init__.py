"""Fed-KiTS (FLamby's Fed-KITS2019): KiTS19 CT in 6 centres, kidney and tumour."""
