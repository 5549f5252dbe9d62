"""Many hosts, one fleet, over etcd (issue 15; keys and fencing: docs/formats/cluster.md)."""
