//! pcie-driver
