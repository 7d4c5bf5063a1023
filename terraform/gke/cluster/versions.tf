terraform {
  # 1.9+: validations may refer to other variables; mock_provider (terraform test) needs 1.7+.
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 8.9"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.9"
    }
  }

  # State holds the generated passwords and keys: keep it in an encrypted, access-controlled
  # bucket. See terraform/README.md ("Remote state") for a backend "gcs" block to add here.
}
