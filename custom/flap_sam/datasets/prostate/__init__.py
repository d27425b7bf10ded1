"""Multi-site prostate MRI (RUNMC, BMC, I2CVB, UCL, BIDMC, HK), as used by SAML and MA-SAM."""
