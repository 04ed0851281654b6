# A stand-in application stack (built-in resources only, no network): its state file is
# the real Terraform state the reference stack protects.

resource "terraform_data" "web" {
  count = 3
  input = {
    name = "web-${count.index}"
    port = 8000 + count.index
  }
}

resource "terraform_data" "database" {
  input = {
    engine  = "postgres"
    version = "15"
  }
}

output "endpoints" {
  value = [for w in terraform_data.web : "127.0.0.1:${w.input.port}"]
}
