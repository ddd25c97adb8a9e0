"""The data-plane seam: the only package that knows the VPN implementation (OpenVPN today)."""
