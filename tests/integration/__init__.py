"""Acceptance tests of the whole path: client -> real load balancer -> real service processes."""
