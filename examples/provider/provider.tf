terraform {
  required_providers {
    localdr = {
      source = "localdr/localdr"
    }
  }
}

# Nothing is required. state_dir holds localdr's desired-state and status files.
provider "localdr" {
  state_dir = "${path.root}/.localdr"
}
