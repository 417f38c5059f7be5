"""The pipeline on AWS: the S3 and Glue adapters of the core's ports, and the Step Functions client."""
