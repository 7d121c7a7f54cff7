"""The sandbox, its upstream server and the demo; the daemon never imports it."""
