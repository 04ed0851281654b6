#!/usr/bin/env bash
# Import an existing backup (snapshots taken by the CLI or another configuration) by
# `<vault>:<name>`. The vault path is the one written in your configuration.
terraform import localdr_backup.state /var/backups/localdr:prod-state
