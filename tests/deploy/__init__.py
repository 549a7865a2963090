"""Tests of the deployment artefacts: Dockerfile, Helm chart, Compose stack, Grafana dashboard."""
