"""Open Hosting: a small IaaS platform behind the Open Hosting (ElasticHosts) HTTP API."""
