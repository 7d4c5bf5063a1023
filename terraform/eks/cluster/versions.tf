terraform {
  # 1.9+: validations may refer to other variables; mock_provider (terraform test) needs 1.7+.
  required_version = ">= 1.9.0, < 2.0.0"

  required_providers {
    # terraform-aws-modules/eks 20.x needs aws >= 5.95, < 6.
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.95"
    }
    helm = {
      source  = "hashicorp/helm"
      version = "~> 2.17"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 2.35"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    # Used inside terraform-aws-modules/eks (OIDC thumbprint, node user data, waits): pinned
    # here too so every provider of this root has an upper bound.
    cloudinit = {
      source  = "hashicorp/cloudinit"
      version = "~> 2.3"
    }
    time = {
      source  = "hashicorp/time"
      version = "~> 0.12"
    }
    tls = {
      source  = "hashicorp/tls"
      version = "~> 4.0"
    }
  }

  # State holds the generated passwords and keys: keep it in an encrypted, access-controlled
  # bucket. See terraform/README.md ("Remote state") for a backend "s3" block to add here.
}
