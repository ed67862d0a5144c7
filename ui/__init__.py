"""flowlake's user interfaces: the ``flowlake`` command line and the demo story."""
