#!/usr/bin/env bash
# Import a balancer whose spec already exists in the provider's state_dir, by its name.
terraform import localdr_balancer.web web
