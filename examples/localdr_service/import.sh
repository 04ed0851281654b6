#!/usr/bin/env bash
# Import a service whose spec already exists in the provider's state_dir, by its name.
terraform import localdr_service.web web
