variable "name" {
  type        = string
  description = "Name of the fleet: prefixes its resources, names its log group /lazysnap/<name>."

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9-]{0,30}$", var.name))
    error_message = "name must be 1-31 characters of a-z, 0-9 and '-', starting with a letter or digit."
  }
}

variable "vpc_id" {
  type        = string
  description = "VPC of the restore hosts."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Private subnets the autoscaling group spreads hosts across, ideally one per availability zone."

  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "subnet_ids needs at least one subnet."
  }
}

variable "create_s3_endpoint" {
  type        = bool
  description = "Create an S3 gateway VPC endpoint on route_table_ids, so chunk fetches reach S3 without a NAT gateway (no per-GB NAT charge) and with aws:SourceVpce set. Set false when the VPC already has one: a route table takes only one S3 gateway endpoint."
  default     = true
}

variable "route_table_ids" {
  type        = list(string)
  description = "Route tables of the hosts' subnets, for the S3 gateway endpoint."
  default     = []
}

variable "s3_endpoint_policy" {
  type        = string
  description = "Optional JSON policy for the S3 gateway endpoint. Null keeps AWS's default (full access), since package repositories may also be served from S3. The bucket policy and the hosts' role already confine lazysnap itself."
  default     = null
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type. Firecracker needs KVM, which EC2 offers on bare-metal (.metal) types."
  default     = "c6i.metal"

  validation {
    condition     = can(regex("\\.metal", var.instance_type))
    error_message = "instance_type must be a bare-metal type (e.g. c6i.metal, m7i.metal-24xl): the guests need /dev/kvm."
  }
}

variable "ami_id" {
  type        = string
  description = "AMI, or an SSM parameter as resolve:ssm:<name>. The default follows Amazon Linux 2023 with kernel 6.12 (x86_64), which has /dev/userfaultfd, UFFDIO_POISON and SO_PEERPIDFD. The user data assumes Amazon Linux 2023 (dnf, the CloudWatch agent package)."
  default     = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.12-x86_64"
}

variable "min_size" {
  type        = number
  description = "Fewest hosts in the autoscaling group."
  default     = 1
}

variable "max_size" {
  type        = number
  description = "Most hosts in the autoscaling group."
  default     = 4
}

variable "desired_capacity" {
  type        = number
  description = "Hosts to start with; null leaves it to scaling policies after creation."
  default     = 2
}

variable "instance_profile_name" {
  type        = string
  description = "Instance profile of the hosts (the iam module's restore_host_instance_profile_name)."
}

variable "instance_role_name" {
  type        = string
  description = "Role of that instance profile (the iam module's restore_host_role_name); this module adds the permission to write to its log group."
}

variable "store_urls" {
  type        = list(string)
  description = "serve's --store list in order: the HTTP cache tier first (the cache-tier module's url followed by /<prefix>), then s3://<bucket>/<prefix>. The first store that delivers verified bytes wins; errors fall through."

  validation {
    condition     = length(var.store_urls) > 0 && alltrue([for u in var.store_urls : can(regex("^(https?|s3)://[A-Za-z0-9._~:/@%+-]+$", u))])
    error_message = "store_urls needs at least one URL, each http://, https:// or s3:// without spaces, quotes or query strings."
  }
}

variable "snapshot_ids" {
  type        = list(string)
  description = "Snapshots every host serves from boot (one lazysnap@<id> instance each, metrics on metrics_port + its index). A platform can start more at run time: write /etc/lazysnap/<id>.env with LAZYSNAP_METRICS_PORT, then systemctl enable --now lazysnap@<id>."
  default     = []

  validation {
    condition     = alltrue([for id in var.snapshot_ids : can(regex("^[A-Za-z0-9][A-Za-z0-9._-]{0,82}$", id)) && !can(regex("\\.\\.", id))])
    error_message = "snapshot_ids must be lazysnap snapshot ids ([A-Za-z0-9._-], starting with a letter or digit, no '..') of at most 83 characters, so that /run/lazysnap/<id>/uffd.sock fits a Unix socket path (107 bytes)."
  }
}

variable "max_snapshots_per_host" {
  type        = number
  description = "Most lazysnap@ instances a host runs; the security group opens this many metrics ports from metrics_port."
  default     = 32

  validation {
    condition     = var.max_snapshots_per_host >= 1 && var.max_snapshots_per_host <= 1024
    error_message = "max_snapshots_per_host must be between 1 and 1024."
  }
}

variable "metrics_port" {
  type        = number
  description = "Prometheus metrics port of the first lazysnap@ instance; instance i uses metrics_port + i."
  default     = 9464

  validation {
    condition     = var.metrics_port >= 1024 && var.metrics_port <= 65535
    error_message = "metrics_port must be an unprivileged port (1024-65535)."
  }
}

variable "metrics_cidr_blocks" {
  type        = list(string)
  description = "IPv4 CIDRs allowed to scrape the metrics ports: the only inbound traffic the hosts accept. Empty: no inbound at all."
  default     = []

  validation {
    condition     = alltrue([for c in var.metrics_cidr_blocks : can(cidrnetmask(c)) && c != "0.0.0.0/0"])
    error_message = "metrics_cidr_blocks must be IPv4 CIDRs, and not 0.0.0.0/0."
  }
}

variable "http_store_cidr_blocks" {
  type        = list(string)
  description = "IPv4 CIDRs the hosts may reach over plain HTTP (port 80): where the cache tier's load balancer is, typically the VPC's CIDR. HTTPS (443) is allowed anywhere: S3, and downloads at boot."
  default     = []

  validation {
    condition     = alltrue([for c in var.http_store_cidr_blocks : can(cidrnetmask(c))])
    error_message = "http_store_cidr_blocks must be IPv4 CIDRs."
  }
}

variable "root_volume_size_gb" {
  type        = number
  description = "Size of the encrypted gp3 root volume, which also holds serve's disk cache (cache_budget)."
  default     = 200
}

variable "ebs_kms_key_arn" {
  type        = string
  description = "KMS key for the root volume; null uses the account's default EBS key. Volumes are encrypted either way."
  default     = null
}

variable "cache_budget" {
  type        = string
  description = "serve --cache-budget: the disk cache's size. Leave room on the root volume for the system and logs."
  default     = "128GiB"

  validation {
    condition     = can(regex("^[0-9]+(B|KiB|MiB|GiB|TiB)?$", var.cache_budget))
    error_message = "cache_budget must be a size like 128GiB."
  }
}

variable "memory_budget" {
  type        = string
  description = "serve --memory-budget: resident chunk bytes each lazysnap@ instance keeps for its sessions (serve's default is 1GiB). Budget host memory for guests plus this per instance."
  default     = "1GiB"

  validation {
    condition     = can(regex("^[0-9]+(B|KiB|MiB|GiB|TiB)?$", var.memory_budget))
    error_message = "memory_budget must be a size like 4GiB."
  }
}

variable "extra_serve_args" {
  type        = list(string)
  description = "More serve options for every instance, e.g. [\"--allow-uid\", \"0\", \"--prefetch\", \"replay\"]."
  default     = []

  validation {
    condition     = alltrue([for a in var.extra_serve_args : can(regex("^[A-Za-z0-9._:/@%+=,-]+$", a))])
    error_message = "extra_serve_args items may not contain spaces, quotes or shell characters."
  }
}

variable "log_level" {
  type        = string
  description = "LAZYSNAP_LOG_LEVEL of serve."
  default     = "info"

  validation {
    condition     = contains(["trace", "debug", "info", "warn", "error", "fatal"], var.log_level)
    error_message = "log_level must be one of trace, debug, info, warn, error, fatal."
  }
}

variable "node_version" {
  type        = string
  description = "Node.js for the hosts: a major line (\"22\": its latest release at boot) or an exact version (\"22.12.0\"). lazysnap needs 20.17 or newer."
  default     = "22"

  validation {
    condition     = can(regex("^[0-9]+(\\.[0-9]+\\.[0-9]+)?$", var.node_version)) && tonumber(split(".", var.node_version)[0]) >= 20
    error_message = "node_version must be a major version (>= 20) or an exact x.y.z version."
  }
}

variable "node_sha256" {
  type        = string
  description = "SHA-256 of the linux-x64 tarball of an exact node_version. Null checks it against the release's SHASUMS256.txt instead; pin both for reproducible hosts."
  default     = null

  validation {
    condition     = var.node_sha256 == null || can(regex("^[0-9a-f]{64}$", var.node_sha256))
    error_message = "node_sha256 must be 64 lowercase hex digits."
  }
}

variable "lazysnap_package" {
  type        = string
  description = "What npm installs as lazysnap: a tarball URL made with npm pack (https://artifacts.example.com/lazysnap-0.1.0.tgz) or a registry spec. Its install script builds the native addon on the host."

  validation {
    condition     = can(regex("^[A-Za-z0-9@._:/~%+=-]+$", var.lazysnap_package))
    error_message = "lazysnap_package may not contain spaces, quotes or shell characters."
  }
}

variable "hugepages_2m" {
  type        = number
  description = "2 MiB huge pages to reserve at boot for hugetlbfs-backed guests (vm.nr_hugepages); 0 reserves none."
  default     = 0

  validation {
    condition     = var.hugepages_2m >= 0 && floor(var.hugepages_2m) == var.hugepages_2m
    error_message = "hugepages_2m must be a whole number >= 0."
  }
}

variable "log_retention_days" {
  type        = number
  description = "Days CloudWatch keeps the hosts' logs."
  default     = 30
}

variable "log_kms_key_arn" {
  type        = string
  description = "Optional KMS key for the log group; its key policy must let CloudWatch Logs use it."
  default     = null
}

variable "tags" {
  type        = map(string)
  description = "Tags added to every resource the module creates, and to the hosts."
  default     = {}
}
