# A fleet of restore hosts: bare-metal instances (KVM for Firecracker) running one lazysnap@<id>
# systemd instance per snapshot, behind nothing. Firecracker on the same host connects to
# /run/lazysnap/<id>/uffd.sock. The only inbound traffic is Prometheus scraping the metrics ports.

data "aws_region" "current" {}

locals {
  snapshots = [for i, id in var.snapshot_ids : { id = id, metrics_port = var.metrics_port + i }]

  # /etc/lazysnap/serve.env, read by every lazysnap@ instance (infra/systemd/lazysnap@.service).
  serve_env = join("\n", [
    "# Written at boot by infra/modules/restore-fleet. The unit splits the two lists into words.",
    "LAZYSNAP_STORES=\"${join(" ", [for u in var.store_urls : "--store ${u}"])}\"",
    "LAZYSNAP_ARGS=\"${join(" ", concat(["--cache-budget", var.cache_budget, "--memory-budget", var.memory_budget], var.extra_serve_args))}\"",
    "LAZYSNAP_LOG_LEVEL=${var.log_level}",
    "AWS_REGION=${data.aws_region.current.id}",
  ])

  cloudwatch_agent_config = jsonencode({
    logs = {
      logs_collected = {
        files = {
          collect_list = [
            {
              file_path       = "/var/log/lazysnap/*.log"
              log_group_name  = aws_cloudwatch_log_group.this.name
              log_stream_name = "{instance_id}/lazysnap"
            },
            {
              file_path       = "/var/log/cloud-init-output.log"
              log_group_name  = aws_cloudwatch_log_group.this.name
              log_stream_name = "{instance_id}/bootstrap"
            },
          ]
        }
      }
    }
  })

  user_data = templatefile("${path.module}/user-data.sh.tftpl", {
    node_version            = var.node_version
    node_sha256             = var.node_sha256 == null ? "" : var.node_sha256
    install_node            = file("${path.module}/../../bootstrap/install-node.sh")
    lazysnap_package        = var.lazysnap_package
    hugepages_2m            = var.hugepages_2m
    serve_env               = local.serve_env
    systemd_unit            = chomp(file("${path.module}/../../systemd/lazysnap@.service"))
    cloudwatch_agent_config = local.cloudwatch_agent_config
    snapshots               = local.snapshots
  })
}

# ---- logs ----------------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "this" {
  name              = "/lazysnap/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.log_kms_key_arn
  tags              = var.tags
}

data "aws_iam_policy_document" "logs" {
  statement {
    sid       = "ShipHostLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
    resources = [aws_cloudwatch_log_group.this.arn, "${aws_cloudwatch_log_group.this.arn}:log-stream:*"]
  }
}

resource "aws_iam_role_policy" "logs" {
  name   = "lazysnap-logs-${var.name}"
  role   = var.instance_role_name
  policy = data.aws_iam_policy_document.logs.json
}

# ---- network -------------------------------------------------------------------------------------

resource "aws_vpc_endpoint" "s3" {
  count = var.create_s3_endpoint ? 1 : 0

  vpc_id            = var.vpc_id
  service_name      = "com.amazonaws.${data.aws_region.current.id}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = var.route_table_ids
  policy            = var.s3_endpoint_policy
  tags              = merge(var.tags, { Name = "${var.name}-s3" })

  lifecycle {
    precondition {
      condition     = length(var.route_table_ids) > 0
      error_message = "The S3 gateway endpoint needs the subnets' route tables: set route_table_ids, or create_s3_endpoint = false."
    }
  }
}

resource "aws_security_group" "hosts" {
  name_prefix = "${var.name}-restore-"
  description = "lazysnap restore hosts: inbound only the metrics ports from the scrapers"
  vpc_id      = var.vpc_id
  tags        = merge(var.tags, { Name = "${var.name}-restore" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each = toset(var.metrics_cidr_blocks)

  security_group_id = aws_security_group.hosts.id
  description       = "Prometheus scrapes lazysnap@ instances' metrics"
  ip_protocol       = "tcp"
  from_port         = var.metrics_port
  to_port           = var.metrics_port + var.max_snapshots_per_host - 1
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_egress_rule" "https" {
  security_group_id = aws_security_group.hosts.id
  description       = "S3 (through the gateway endpoint), CloudWatch Logs, package downloads at boot"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "http_store" {
  for_each = toset(var.http_store_cidr_blocks)

  security_group_id = aws_security_group.hosts.id
  description       = "The HTTP cache tier"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
  cidr_ipv4         = each.value
}

# ---- hosts ---------------------------------------------------------------------------------------

resource "aws_launch_template" "this" {
  name_prefix            = "${var.name}-restore-"
  description            = "lazysnap restore host"
  image_id               = var.ami_id
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.hosts.id]
  update_default_version = true
  # cloud-init takes gzip: the unit and the script together would crowd the 16 KiB user data limit.
  user_data = base64gzip(local.user_data)

  iam_instance_profile {
    name = var.instance_profile_name
  }

  metadata_options {
    http_endpoint = "enabled"
    # IMDSv2 only: credentials need a session token, which a forged request (SSRF) cannot obtain.
    http_tokens = "required"
    # One hop: processes on the host reach IMDS, guests and containers behind a bridge do not.
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = "/dev/xvda"

    ebs {
      volume_type           = "gp3"
      volume_size           = var.root_volume_size_gb
      encrypted             = true
      kms_key_id            = var.ebs_kms_key_arn
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(var.tags, { Name = "${var.name}-restore" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(var.tags, { Name = "${var.name}-restore" })
  }

  tags = var.tags

  lifecycle {
    precondition {
      condition     = length(var.snapshot_ids) <= var.max_snapshots_per_host
      error_message = "snapshot_ids has more snapshots than max_snapshots_per_host opens metrics ports for."
    }

    precondition {
      condition     = var.metrics_port + var.max_snapshots_per_host - 1 <= 65535
      error_message = "metrics_port + max_snapshots_per_host - 1 must be a port (65535 or less)."
    }
  }
}

resource "aws_autoscaling_group" "this" {
  name_prefix         = "${var.name}-restore-"
  vpc_zone_identifier = var.subnet_ids
  min_size            = var.min_size
  max_size            = var.max_size
  desired_capacity    = var.desired_capacity
  health_check_type   = "EC2"
  # Bootstrap downloads Node and builds lazysnap's addon: give it time before judging the host.
  health_check_grace_period = 600

  launch_template {
    id      = aws_launch_template.this.id
    version = aws_launch_template.this.latest_version
  }

  # A new launch template version replaces hosts a few at a time. Replacing a host ends the VMs
  # it serves: platforms that cannot drain should suspend refreshes and replace hosts themselves.
  instance_refresh {
    strategy = "Rolling"

    preferences {
      min_healthy_percentage = 90
    }
  }

  # The hosts are named by the launch template's tag_specifications.
  dynamic "tag" {
    for_each = var.tags

    content {
      key                 = tag.key
      value               = tag.value
      propagate_at_launch = true
    }
  }
}
