"""test_algorithms: the echo algorithm used by the demo and the integration tests."""
