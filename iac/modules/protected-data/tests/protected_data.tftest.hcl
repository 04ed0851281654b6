# terraform test (Terraform >= 1.6): apply the module for real against the fixtures and
# check what the provider reports. Vaults live under .tftest/ (removed by scripts/test.sh).

variables {
  name                        = "tftest"
  tfstate_path                = "tests/fixtures/app.tfstate"
  data_path                   = "tests/fixtures/data"
  vault                       = ".tftest/vault"
  dr_vault                    = ".tftest/dr"
  keep_last                   = 2
  delete_snapshots_on_destroy = true
}

run "backs_up_state_and_data" {
  command = apply

  assert {
    condition     = startswith(output.state_snapshot_id, "tftest-state_")
    error_message = "state snapshot id must be <name>_YYYY-MM-DD_HH-MM-SS"
  }

  assert {
    condition     = can(regex("^tftest-data_[0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9]{2}-[0-9]{2}-[0-9]{2}(_[0-9]+)?$", output.data_snapshot_id))
    error_message = "data snapshot id has the wrong shape: ${output.data_snapshot_id}"
  }

  assert {
    condition     = output.data_file_count == 2
    error_message = "the data fixture holds 2 files"
  }

  assert {
    condition     = output.data_size_bytes == 61
    error_message = "the data fixture holds 61 bytes, got ${output.data_size_bytes}"
  }

  assert {
    condition     = output.valid
    error_message = "fresh snapshots must verify"
  }

  assert {
    condition     = localdr_backup.this["state"].retention[0].keep_last == 2
    error_message = "retention must be passed through"
  }

  assert {
    condition     = length(localdr_backup.this["data"].checksum) == 64
    error_message = "checksum must be a BLAKE3 hex digest"
  }

  assert {
    condition     = localdr_backup.this["data"].copy[0].vault == ".tftest/dr"
    error_message = "the DR copy must be configured"
  }
}

run "new_trigger_takes_new_snapshots_and_retention_holds" {
  command = apply

  variables {
    triggers = { release = "2" }
  }

  assert {
    condition     = output.snapshots["tftest-state"] == 2
    error_message = "two state snapshots after the second run, got ${output.snapshots["tftest-state"]}"
  }

  assert {
    condition     = localdr_backup.this["state"].triggers["release"] == "2"
    error_message = "triggers must be stored"
  }
}

run "third_run_is_pruned_to_keep_last" {
  command = apply

  variables {
    triggers = { release = "3" }
  }

  assert {
    condition     = output.snapshots["tftest-data"] == 2
    error_message = "keep_last = 2 must prune to 2 snapshots, got ${output.snapshots["tftest-data"]}"
  }
}

run "rejects_keep_last_zero" {
  command = plan

  variables {
    keep_last = 0
  }

  expect_failures = [var.keep_last]
}

run "only_a_state" {
  command = plan

  variables {
    name      = "only"
    data_path = null
  }

  assert {
    condition     = length(localdr_backup.this) == 1 && contains(keys(localdr_backup.this), "state")
    error_message = "without data_path only the state backup is planned"
  }
}
