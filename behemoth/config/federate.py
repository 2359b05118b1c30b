"""The `[federate]` config section: clients, sampling, local training, strategy, partitions, privacy, faults.

Kept free of torch and flwr (like `[tune]`) so loading any config stays light. Names follow McMahan et
al. 2017: K clients, a fraction C of them sampled per round, E local epochs of batch B.

    [federate]
    clients = 100          # K
    fraction = 0.1         # C
    local_epochs = 5       # E
    local_batch = 10       # B; 0 = the whole partition in one batch (B = inf, FedSGD)
    rounds = 50
    strategy = "fedavg"    # fedavg | fedprox | fedadam | fedmedian | fedtrimmedavg | krum
    target_accuracy = 0.99 # stop once the global model reaches it on the test split
    partition = "shards"   # iid | shards (sort by label, 2 per client) | dirichlet (alpha)
    secagg = true          # SecAgg+ (fedavg): the server sees only the sum of the masked updates
    adapters_only = true   # with [train.lora]: only the LoRA adapters travel; the frozen base stays put

    [federate.dp]          # differential privacy: off | client (Opacus DP-SGD) | server (Flower's wrapper)
    mode = "client"
    noise_multiplier = 1.1
    clip_norm = 1.0

Also the two rules a federation's peers are held to: RoundSettings, all a server may tell a client each
round (the rest of a client's config is its own), and check_deploy_security (no TLS only on loopback).
"""

import ipaddress
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from behemoth.config.section import Section
from behemoth.errors import BehemothError, ConfigError

# federate.strategy's names, here so the config stays free of flwr: behemoth.federated.strategies builds each
# from its STRATEGY_REGISTRY, which a test keeps equal to this list
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedadam", "fedmedian", "fedtrimmedavg", "krum")
Partition = Literal["iid", "shards", "dirichlet"]


class DPConfig(Section):
    """Differential privacy. `client`: every client trains with DP-SGD (Opacus: per-sample clipping + noise,
    Poisson-sampled batches), (epsilon, delta) per client's records. `server`: Flower's
    DifferentialPrivacyServerSideFixedClipping clips each client's update and noises the average,
    (epsilon, delta) per client (client-level), counted without sampling amplification."""

    mode: Literal["off", "client", "server"] = "off"
    noise_multiplier: float = Field(1.0, gt=0.0)  # noise std / clip_norm
    clip_norm: float = Field(1.0, gt=0.0)  # client: per-sample gradient L2 bound; server: per-update L2 bound
    delta: float = Field(1e-5, gt=0.0, lt=1.0)  # the delta of (epsilon, delta)
    target_epsilon: float | None = Field(None, gt=0.0)  # set: pick the noise that spends it over `rounds`


class FaultsConfig(Section):
    """Simulated failures, to check that the federation survives them (all off by default)."""

    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # share of each round's sampled clients that fail mid-round
    dropout_after_steps: int = Field(1, ge=0)  # a failing client raises after this many local steps
    scaled_clients: list[int] = []  # partition ids sending global + poison_scale * (local - global)
    poison_scale: float = -10.0  # the scale of scaled_clients' updates
    nan_clients: list[int] = []  # partition ids sending NaN weights
    crash_after_round: int | None = Field(None, ge=1)  # the server fails after checkpointing this round


class DeployConfig(Section):
    """`behemoth federate --deploy`: one flower-superlink and `clients` flower-supernode processes."""

    host: str = "127.0.0.1"  # the SuperLink's address
    port: int = Field(0, ge=0, le=65535)  # the SuperLink's port; 0 picks a free one
    tls: bool = True  # a CA and a server certificate are generated; false only on loopback or --insecure
    node_auth: bool = True  # SuperNodes prove an EC key registered with the SuperLink
    startup_timeout: float = Field(60.0, gt=0.0)  # seconds to wait for the SuperLink to listen


class FederateConfig(Section):
    clients: int = Field(10, ge=1)  # K: partitions, one per SuperNode
    fraction: float = Field(0.1, gt=0.0, le=1.0)  # C: share of the clients sampled each round
    min_clients: int = Field(1, ge=1)  # sample at least this many
    local_epochs: int = Field(1, ge=1)  # E
    local_batch: int = Field(10, ge=0)  # B; 0 = the whole partition (B = inf)
    rounds: int = Field(10, ge=1)  # each: sample clients, train them locally, merge, evaluate
    strategy: str = "fedavg"  # the Flower strategy that merges the clients' updates
    target_accuracy: float | None = Field(None, gt=0.0, le=1.0)  # stop early on global test accuracy
    fraction_evaluate: float = Field(0.0, ge=0.0, le=1.0)  # clients also evaluating the global model locally
    seed: int = 0  # partitions, client sampling, dropouts, local shuffles
    timeout: float = Field(3600.0, gt=0.0)  # seconds the server waits for a round's replies
    max_empty_rounds: int = Field(
        3, ge=1
    )  # stop with an error after this many rounds in a row without a usable update

    # strategy options (each read only by its strategy)
    proximal_mu: float = Field(0.01, ge=0.0)  # fedprox
    server_lr: float = Field(0.01, gt=0.0)  # fedadam: eta
    server_betas: tuple[float, float] = (0.9, 0.99)  # fedadam
    server_tau: float = Field(1e-3, gt=0.0)  # fedadam: adaptivity
    trim_beta: float = Field(0.2, ge=0.0, lt=0.5)  # fedtrimmedavg: share cut at each end
    krum_malicious: int = Field(0, ge=0)  # krum: f, the number of malicious clients tolerated

    # partitions of the training split
    partition: Partition = "iid"  # how the training split is divided among the clients
    shards_per_client: int = Field(2, ge=1)  # shards
    alpha: float = Field(0.5, gt=0.0)  # dirichlet concentration: small = skewed
    min_partition_size: int = Field(10, ge=1)  # dirichlet: redraw until every client has this many

    # where clients run (simulation)
    client_cpus: float = Field(1.0, gt=0.0)  # Ray CPUs per client: cores / client_cpus clients train at once
    client_threads: int = Field(1, ge=1)  # torch threads inside each client

    # secure aggregation (fedavg only): the server sees only the sum of the round's masked updates
    secagg: bool = False  # SecAgg+ (Bell et al. 2020) through Flower's SecAggPlusWorkflow and secaggplus_mod
    secagg_shares: int = Field(
        3, ge=2
    )  # each client's keys are split among this many clients (itself included)
    secagg_threshold: int = Field(
        2, ge=2
    )  # shares that rebuild a key: dropouts are recovered while this many remain
    # parameter-efficient federation: with [train.lora], only the trainable adapter tensors (and any
    # modules_to_save) travel each round, both ways; each party builds the frozen base from its model.path
    adapters_only: bool = False  # exchange (and aggregate) the LoRA adapters only; needs [train.lora]
    dp: DPConfig = DPConfig()
    faults: FaultsConfig = FaultsConfig()
    deploy: DeployConfig = DeployConfig()

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, name: str) -> str:
        """A name behemoth.federated.strategies builds, checked here without importing flwr."""
        if name not in STRATEGIES:
            raise ValueError(f"unknown strategy (known: {', '.join(STRATEGIES)})")
        return name

    @property
    def sampled_clients(self) -> int:
        """Clients per round, as Flower's FedAvg samples them: max(int(K * C), min_clients)."""
        return max(int(self.clients * self.fraction), self.min_clients)

    @model_validator(mode="after")
    def _check(self) -> "FederateConfig":
        """Combinations no single field can judge; raised as ConfigError so the line names the fields."""
        if self.min_clients > self.clients:
            raise ConfigError(
                f"federate.min_clients = {self.min_clients}: more than federate.clients = {self.clients}"
            )
        for name in ("scaled_clients", "nan_clients"):
            bad = [p for p in getattr(self.faults, name) if not 0 <= p < self.clients]
            if bad:
                raise ConfigError(
                    f"federate.faults.{name}: {bad[0]} is not a partition id in [0, {self.clients})"
                )
        m = self.sampled_clients
        if self.strategy == "krum" and m <= 2 * self.krum_malicious + 2:
            raise ConfigError(
                f"federate.strategy = 'krum' with krum_malicious = {self.krum_malicious}: needs more "
                f"than {2 * self.krum_malicious + 2} clients per round, got {m}"
            )
        if self.dp.mode == "client" and self.strategy == "fedprox":
            raise ConfigError(
                "federate.dp.mode = 'client' with strategy = 'fedprox': DP-SGD clips per-sample "
                "gradients and would drop the proximal term's gradient"
            )
        if self.dp.mode == "server" and self.strategy not in ("fedavg", "fedprox", "fedadam"):
            raise ConfigError(
                f"federate.dp.mode = 'server' with strategy = {self.strategy!r}: the noise is "
                "calibrated to an average of clipped updates (fedavg, fedprox, fedadam)"
            )
        if self.secagg:
            _check_secagg(self)
        return self


SECAGG_MAX_CLIENTS = 1023  # each masked value is a 22-bit integer summed modulo 2**32 (Flower's defaults)


def _check_secagg(fed: FederateConfig) -> None:
    """What SecAgg+ needs from the rest of the section; each line names the field it cannot live with."""
    m = fed.sampled_clients
    if fed.strategy != "fedavg":
        raise ConfigError(
            f"federate.secagg = true: SecAgg+ sums masked updates, so it needs strategy = 'fedavg' "
            f"(got {fed.strategy!r}; robust strategies must see each update)"
        )
    if fed.dp.mode == "server":
        raise ConfigError(
            "federate.secagg = true with dp.mode = 'server': server-side DP clips each update, which "
            "the server never sees under SecAgg+; use dp.mode = 'client'"
        )
    if fed.secagg_threshold > fed.secagg_shares:
        raise ConfigError(
            f"federate.secagg_threshold = {fed.secagg_threshold}: more than federate.secagg_shares = "
            f"{fed.secagg_shares} (a key cannot need more shares than it was split into)"
        )
    if fed.secagg_shares > m:
        raise ConfigError(
            f"federate.secagg_shares = {fed.secagg_shares}: SecAgg+ shares each key among clients of "
            f"the same round, but only {m} are sampled per round (clients * fraction, at least "
            "min_clients)"
        )
    if fed.secagg_shares < m and fed.secagg_shares % 2 == 0:
        raise ConfigError(
            f"federate.secagg_shares = {fed.secagg_shares}: must be odd, or equal to the {m} clients "
            "per round (a client shares with itself and as many neighbours on each side)"
        )
    if m > SECAGG_MAX_CLIENTS:
        raise ConfigError(
            f"federate.secagg = true with {m} clients per round: the masked sum overflows above "
            f"{SECAGG_MAX_CLIENTS}"
        )


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only: "localhost" or a loopback address (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # any other host name may resolve anywhere
        return False


def check_deploy_security(deploy: DeployConfig, insecure: bool) -> None:
    """Refuse a deployment that would quietly send weights in the clear: `tls = false` is for traffic that
    never leaves this machine, or for a user who says so (`--insecure`). Node authentication needs TLS."""
    if not deploy.tls and not insecure and not is_loopback(deploy.host):
        raise ConfigError(
            f"federate.deploy.tls = false with host = {deploy.host!r}, not a loopback address: weights "
            "would cross the network unencrypted; set federate.deploy.tls = true, or pass --insecure "
            "(insecure=True from Python) to run without TLS anyway"
        )
    if deploy.node_auth and not deploy.tls:
        raise ConfigError("federate.deploy.node_auth = true: needs federate.deploy.tls = true")


class RefusedMessage(BehemothError):
    """A client refuses what a server sent: a record or round setting outside RoundSettings, or arrays that do
    not fit its own model. Raised in the ClientApp, so the reply is an error the server counts as a failed
    client; the round goes on without it."""


class RoundSettings(BaseModel):
    """The only things a server may set for one client round; everything else about a client (model, data,
    privacy, which code it trusts) comes from the client's own config, so a server can choose neither the
    code a client runs, nor the file it reads, nor the noise it adds. Wire names as Flower writes them."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    server_round: int = Field(alias="server-round", ge=1)
    local_epochs: int | None = Field(None, alias="local-epochs", ge=1, le=10_000)
    lr: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    proximal_mu: float = Field(0.0, alias="proximal-mu", ge=0.0, allow_inf_nan=False)  # FedProx
    fail_after_steps: int | None = Field(None, alias="fail-after-steps", ge=0)  # federate.faults.dropout


ROUND_SETTINGS = tuple(field.alias or name for name, field in RoundSettings.model_fields.items())


def parse_round_settings(values: Mapping[str, Any]) -> RoundSettings:
    """A round's ConfigRecord as RoundSettings, or RefusedMessage naming the first key or value refused."""
    try:
        return RoundSettings.model_validate(dict(values))
    except ValidationError as error:
        raise RefusedMessage(_settings_problem(error.errors()[0])) from None


def _settings_problem(error: Mapping[str, Any]) -> str:
    """One line for a pydantic error on the round settings."""
    key = str(error["loc"][0]) if error.get("loc") else "?"
    if error["type"] == "extra_forbidden":
        return (
            f"the server sent {key!r}, not a round setting (a client takes only "
            f"{', '.join(ROUND_SETTINGS)} from a server; the rest is its own config)"
        )
    if error["type"] == "missing":
        return f"the server's round settings lack {key!r}"
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"round setting {key!r} = {shown}: {error['msg']}"
