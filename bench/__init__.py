"""``make bench``: tokenrelay's speed on loopback, beside calling the upstream directly."""
