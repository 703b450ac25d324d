//! Multi-layer perceptrons with forward-mode tangents.
//!
//! Every network of the reference experiments is a small MLP with input `[x, t]`, tanh hidden
//! layers and a linear or softplus output (`docs/REFERENCE.md`, "2-64-64-1"). Several losses need
//! derivatives of such a network *inside* the loss — the divergence `∇·v` of a continuous
//! normalizing flow (`docs/MATH.md` §3), `∂/∂t` of a learned mean or scale. candle's autograd is
//! reverse-mode only and cannot differentiate a gradient, so [`Mlp`] computes these
//! derivatives in forward mode: each tangent `u` is pushed through the network beside the
//! value, layer by layer,
//!
//! ```text
//! z₁ = x W₁ᵀ + b₁            dz₁ = u W₁ᵀ          (u = e_k: dz₁ = W₁[:, k])
//! hᵢ = tanh(zᵢ)              dhᵢ = (1 − hᵢ²) ⊙ dzᵢ
//! zᵢ₊₁ = hᵢ Wᵢ₊₁ᵀ + bᵢ₊₁       dzᵢ₊₁ = dhᵢ Wᵢ₊₁ᵀ
//! y = softplus(z_L)          dy = sigmoid(z_L) ⊙ dz_L     (or y = z_L, dy = dz_L)
//! ```
//!
//! so `dy = J u` is an ordinary tensor expression of the weights, and a loss containing it
//! back-propagates to the weights as usual.
//!
//! Parameters live in a [`candle_nn::VarMap`] (so `candle_nn::AdamW` trains them) and are
//! initialised like PyTorch's `nn.Linear` default — weights and biases uniform in
//! `±1/√fan_in` — from an RNG the caller seeds: same seed, bit-identical weights.
//!
//! [`divergence_exact`] and [`divergence_hutchinson`] turn a field `v: ℝᵈ × [0, 1] → ℝᵈ`
//! given by an MLP with input `[x, t]` into `(v, ∇·v)`.
//!
//! # Performance
//! At batch 125 on a 2-64-64-1 network the cost is per-op overhead and a few slow candle
//! kernels, not arithmetic. Measured on the 2-core reference machine kind (`f32`, one thread;
//! the timing test in `tests/mlp.rs`), `forward_with_tangents` for one direction plus the
//! backward pass of a loss containing it went from about 1,180 µs with the textbook candle
//! graph to about 240 µs:
//! - the hidden tanh is a custom op with a fast approximation in `f32`
//!   ([`fast_tanh`](crate::engine::fast_tanh), shared with the fused kernel): libm's `tanhf`
//!   costs about 10 ns a value, 160 µs of every forward pass, against 12 µs;
//! - biases are added as an outer product with a column of ones, and coordinate tangents
//!   start as one-hot rows times `W₁ᵀ`, so that no trainable tensor is broadcast over the
//!   batch: the backward pass of a broadcast is a sum over the batch axis, which candle's CPU
//!   backend computes element by element (26 µs per `(125, 64)` gradient against < 1 µs for
//!   the equivalent matmul);
//! - several tangent directions travel as separate `(batch, width)` tensors, not stacked
//!   along a leading axis (stacking brings back the same slow sum).
//!
//! candle runs its matmuls on all the cores rayon sees; for networks this small one thread
//! (`RAYON_NUM_THREADS=1`) was about 5× faster on the 2-core machine, and 15× faster on a
//! 16-core container whose rayon default saw more cores than it could use. Binaries should
//! set it.

use std::sync::PoisonError;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::Rng;

use crate::engine::kernel::Real;
use crate::error::{Error, Result};

/// The activation applied to an MLP's output layer (hidden layers are always tanh).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `y = z`: drifts, velocities, means.
    Identity,
    /// `y = softplus(z) = ln(1 + eᶻ)`, always positive: diffusion coefficients, scales.
    Softplus,
}

/// The shape of an [`Mlp`].
///
/// `widths = [n_in, h₁, …, h_k, n_out]` gives `widths.len() − 1` affine layers with tanh
/// between them and [`output`](Self::output) after the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpConfig {
    /// Layer widths from input to output, e.g. `[2, 64, 64, 1]`; at least two entries, all
    /// at least 1.
    pub widths: Vec<usize>,
    /// The output activation.
    pub output: Activation,
}

impl MlpConfig {
    /// A configuration with the given widths and output activation (validated when the
    /// network is built).
    pub fn new(widths: Vec<usize>, output: Activation) -> Self {
        Self { widths, output }
    }

    /// The network of every reference experiment: input `[x, t]`, two hidden layers of 64
    /// tanh units, one output (`docs/REFERENCE.md`, "Shared setting": 2-64-64-1).
    pub fn reference(output: Activation) -> Self {
        Self::new(vec![2, 64, 64, 1], output)
    }

    /// Checks that there are at least two widths and that all are at least 1.
    pub fn validate(&self) -> Result<()> {
        if self.widths.len() < 2 {
            return Err(Error::invalid(
                "widths",
                format!("{:?}", self.widths),
                "need at least an input and an output width",
            ));
        }
        if self.widths.contains(&0) {
            return Err(Error::invalid(
                "widths",
                format!("{:?}", self.widths),
                "every width must be at least 1",
            ));
        }
        Ok(())
    }
}

/// The time argument of a field `v(x, t)` evaluated through an MLP with input `[x, t]`.
#[derive(Debug, Clone, Copy)]
pub enum Time<'a> {
    /// One time for the whole batch (ODE integration).
    Scalar(f64),
    /// One time per sample, a `(batch, 1)` tensor (simulation-free training losses).
    PerSample(&'a Tensor),
}

impl From<f64> for Time<'_> {
    fn from(t: f64) -> Self {
        Time::Scalar(t)
    }
}

impl<'a> From<&'a Tensor> for Time<'a> {
    fn from(t: &'a Tensor) -> Self {
        Time::PerSample(t)
    }
}

/// One affine layer. `weight` is `(out, in)` and `bias` `(out,)`, like PyTorch's and
/// candle-nn's `Linear`; `weight_t` (its transpose) and `bias_row` (`(1, out)`) are views
/// made once, sharing the variables' storage (so optimiser updates show through), which saves
/// a node per layer and call.
#[derive(Debug, Clone)]
struct Layer {
    weight: Tensor,
    weight_t: Tensor,
    bias: Tensor,
    bias_row: Tensor,
}

impl Layer {
    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let weight_t = weight.t()?;
        let bias_row = bias.reshape((1, bias.dim(0)?))?;
        Ok(Self {
            weight,
            weight_t,
            bias,
            bias_row,
        })
    }

    /// `x Wᵀ + 1 bᵀ`, the bias added as the outer product of a `(batch, 1)` column of ones
    /// with `bᵀ` rather than by broadcasting: candle's backward pass of a broadcast is a sum
    /// over the batch axis, which its CPU backend does element by element (26 µs for a
    /// `(125, 64)` gradient), while the outer product's backward pass is a `1 × batch` matmul
    /// (under 1 µs).
    fn affine(&self, xs: &Tensor, ones: &Tensor) -> Result<Tensor> {
        Ok((xs.matmul(&self.weight_t)? + ones.matmul(&self.bias_row)?)?)
    }
}

/// The input tangents to push through the network.
enum Seed<'a> {
    /// Input coordinates `e_k`.
    Coordinates(&'a [usize]),
    /// Arbitrary `(batch, n_in)` tangents.
    Vectors(&'a [Tensor]),
}

/// A multi-layer perceptron with tanh hidden layers, trainable through a
/// [`candle_nn::VarMap`], that also evaluates exact Jacobian–vector products in forward mode.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// use candle_nn::VarMap;
/// use rand::{rngs::StdRng, SeedableRng};
/// use sde_variational::mlp::{Activation, Mlp, MlpConfig};
/// # fn main() -> sde_variational::Result<()> {
/// let varmap = VarMap::new();
/// let mut rng = StdRng::seed_from_u64(0);
/// let config = MlpConfig::reference(Activation::Softplus); // 2-64-64-1
/// let sigma = Mlp::new(&config, &varmap, "sigma", DType::F32, &Device::Cpu, &mut rng)?;
///
/// // A batch of three [x, t] rows; the output and ∂output/∂t (input coordinate 1).
/// let xt = Tensor::new(&[[0.5f32, 0.1], [-1.0, 0.5], [2.0, 0.9]], &Device::Cpu)?;
/// let (y, tangents) = sigma.forward_with_tangents(&xt, &[1])?;
/// assert_eq!(y.dims(), &[3, 1]);
/// assert_eq!(tangents[0].dims(), &[3, 1]);
///
/// // The derivative is an ordinary tensor: a loss containing it trains the weights.
/// let loss = tangents[0].sqr()?.mean_all()?;
/// let grads = loss.backward()?;
/// assert!(varmap.all_vars().iter().all(|w| grads.get(w).is_some()));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Mlp {
    /// All weights and biases, flat: per layer the weight `(out, in)` row-major, then the bias.
    params: Tensor,
    /// Per-layer views into `params` (same storage).
    layers: Vec<Layer>,
    config: MlpConfig,
    dtype: DType,
    device: Device,
}

impl Mlp {
    /// A copy whose parameters are detached from the variables: evaluating it builds no
    /// gradient graph, so large evaluations (validation, figures) keep no intermediates alive.
    /// The copy shares storage with the variables, so it sees later optimiser updates only
    /// if the optimiser updates in place (candle's `Var::set` does).
    pub fn detached(&self) -> Result<Self> {
        Self::from_flat(&self.config, self.params.detach())
    }

    /// The network whose parameters are the flat `(P,)` tensor `params` (layout as
    /// [`params`](Self::params)); the layers are views into it, so gradients flow to it and
    /// in-place updates of its storage show through.
    ///
    /// # Errors
    /// Invalid widths, a dtype other than `f32`/`f64`, or `params` not `(P,)`.
    pub fn from_flat(config: &MlpConfig, params: Tensor) -> Result<Self> {
        config.validate()?;
        check_dtype(params.dtype())?;
        let n = Self::n_params_of(&config.widths);
        if params.dims() != [n] {
            return Err(Error::invalid(
                "params",
                format!("shape {:?} for widths {:?}", params.dims(), config.widths),
                "must be the flat (P,) parameter vector",
            ));
        }
        let mut layers = Vec::with_capacity(config.widths.len() - 1);
        let mut off = 0;
        for pair in config.widths.windows(2) {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let weight = params
                .narrow(0, off, fan_out * fan_in)?
                .reshape((fan_out, fan_in))?;
            let bias = params.narrow(0, off + fan_out * fan_in, fan_out)?;
            off += fan_out * (fan_in + 1);
            layers.push(Layer::new(weight, bias)?);
        }
        Ok(Self {
            dtype: params.dtype(),
            device: params.device().clone(),
            params,
            layers,
            config: config.clone(),
        })
    }

    /// The number of parameters `Σ out·(in + 1)` of a network of `widths`.
    pub fn n_params_of(widths: &[usize]) -> usize {
        widths.windows(2).map(|w| w[1] * (w[0] + 1)).sum()
    }

    /// All weights and biases as one flat `(P,)` tensor: for each affine layer its weight
    /// `(out, in)` row-major, then its bias. For a network made by [`Mlp::new`] this is the
    /// variable registered in the `VarMap`; the fused engine ([`crate::engine`]) reads it as it
    /// is, and its gradient is one `(P,)` tensor.
    pub fn params(&self) -> &Tensor {
        &self.params
    }

    /// Creates the parameters, initialised like PyTorch's `nn.Linear` default (weights and
    /// biases uniform in `±1/√fan_in`, drawn layer by layer, weight before bias, row-major)
    /// from `rng` on the host, and registers them in `varmap` as one flat variable
    /// `{prefix}.params` of shape `(P,)` (layout as [`params`](Self::params)).
    ///
    /// The draws are made in `f64` and rounded to `dtype`, so an `f32` and an `f64` network
    /// built from the same seed agree up to rounding.
    ///
    /// # Errors
    /// Invalid widths, a `dtype` other than `f32`/`f64`, or a `prefix` whose name is already
    /// in `varmap` (nothing is inserted then).
    pub fn new<R: Rng + ?Sized>(
        config: &MlpConfig,
        varmap: &VarMap,
        prefix: &str,
        dtype: DType,
        device: &Device,
        rng: &mut R,
    ) -> Result<Self> {
        config.validate()?;
        check_dtype(dtype)?;
        let mut data = varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
        let name = param_name(prefix);
        if data.contains_key(&name) {
            return Err(Error::invalid(
                "prefix",
                format!("{prefix:?} ({name} exists)"),
                "its parameter name is already in the VarMap",
            ));
        }
        let mut values = Vec::with_capacity(Self::n_params_of(&config.widths));
        for pair in config.widths.windows(2) {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            for _ in 0..fan_out * (fan_in + 1) {
                values.push(rng.random_range(-bound..bound));
            }
        }
        let n = values.len();
        let var = Var::from_tensor(&host_tensor(values, n, dtype, device)?)?;
        let mlp = Self::from_flat(config, var.as_tensor().clone())?;
        data.insert(name, var);
        Ok(mlp)
    }

    /// Takes existing parameters from a [`VarBuilder`] — trained weights from safetensors, or
    /// the [`VarMap`] of a network built with [`Mlp::new`] — under the name `params` relative
    /// to `vb`'s prefix (so `vb.pp(prefix)` for a network created with that prefix).
    ///
    /// # Errors
    /// Invalid widths, a `vb` dtype other than `f32`/`f64`, a missing tensor, or a tensor of
    /// the wrong shape, dtype or device.
    pub fn from_var_builder(config: &MlpConfig, vb: VarBuilder<'_>) -> Result<Self> {
        config.validate()?;
        check_dtype(vb.dtype())?;
        if !vb.contains_tensor("params") {
            return Err(Error::invalid("var_builder", "params", "tensor missing"));
        }
        let params = vb.get(Self::n_params_of(&config.widths), "params")?;
        // A VarMap hands back its variables as they are, whatever vb's dtype.
        if params.dtype() != vb.dtype() || !params.device().same_device(vb.device()) {
            return Err(Error::invalid(
                "var_builder",
                format!("params in {:?} on {:?}", params.dtype(), params.device()),
                "tensor dtype or device differs from the VarBuilder's",
            ));
        }
        Self::from_flat(config, params)
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// The input width `widths[0]`.
    pub fn in_dim(&self) -> usize {
        self.config.widths[0]
    }

    /// The output width, the last entry of `widths`.
    pub fn out_dim(&self) -> usize {
        self.config.widths[self.config.widths.len() - 1]
    }

    /// The parameters' dtype; inputs must have the same.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The parameters' device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The number of affine layers, `widths.len() − 1`.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// The weight `(out, in)` of affine layer `i`, or `None` past the last layer.
    pub fn weight(&self, i: usize) -> Option<&Tensor> {
        self.layers.get(i).map(|l| &l.weight)
    }

    /// The bias `(out,)` of affine layer `i`, or `None` past the last layer.
    pub fn bias(&self, i: usize) -> Option<&Tensor> {
        self.layers.get(i).map(|l| &l.bias)
    }

    /// The output `(batch, n_out)` for inputs `xs` of shape `(batch, n_in)`.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.check_input("xs", xs, self.in_dim())?;
        Ok(self.propagate(xs, Seed::Vectors(&[]))?.0)
    }

    /// The output `(batch, n_out)` and, for every input coordinate `k` in `dirs`, the
    /// derivative `∂output/∂input_k`, shaped `(batch, n_out)`, computed in forward mode.
    ///
    /// The results are ordinary tensors: losses containing them back-propagate to the weights.
    /// Each direction costs about as much as another forward pass (one elementwise product and
    /// one matmul per layer; the tanh values are shared).
    ///
    /// # Errors
    /// `xs` not `(batch, n_in)` in the network's dtype, or a direction `≥ n_in`.
    pub fn forward_with_tangents(
        &self,
        xs: &Tensor,
        dirs: &[usize],
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.check_input("xs", xs, self.in_dim())?;
        if let Some(&k) = dirs.iter().find(|&&k| k >= self.in_dim()) {
            return Err(Error::invalid(
                "dirs",
                format!("{k} for input width {}", self.in_dim()),
                "must index an input coordinate",
            ));
        }
        self.propagate(xs, Seed::Coordinates(dirs))
    }

    /// The output `(batch, n_out)` and the Jacobian–vector products `J u` `(batch, n_out)`
    /// for each tangent `u` of shape `(batch, n_in)` (one direction per sample), computed in
    /// forward mode. Hutchinson's trace estimator in `d > 1` needs this form.
    ///
    /// # Errors
    /// `xs` or a tangent not `(batch, n_in)` in the network's dtype.
    pub fn forward_jvp(&self, xs: &Tensor, tangents: &[Tensor]) -> Result<(Tensor, Vec<Tensor>)> {
        let batch = self.check_input("xs", xs, self.in_dim())?;
        for u in tangents {
            if self.check_input("tangents", u, self.in_dim())? != batch {
                return Err(Error::invalid(
                    "tangents",
                    format!("shape {:?} for a batch of {batch}", u.dims()),
                    "must be (batch, input width)",
                ));
            }
        }
        self.propagate(xs, Seed::Vectors(tangents))
    }

    fn output_activation(&self, z: &Tensor) -> Result<Tensor> {
        match self.config.output {
            Activation::Identity => Ok(z.clone()),
            Activation::Softplus => softplus(z),
        }
    }

    /// The value `(batch, n_out)` and one output tangent `(batch, n_out)` per seed direction.
    /// Inputs are already validated.
    ///
    /// Every tangent is a plain `(batch, width)` tensor from the first layer on. Coordinate
    /// seeds enter as one-hot rows times `W₁ᵀ` rather than as the column `W₁[:, k]` broadcast
    /// over the batch, and several directions travel as separate tensors rather than stacked
    /// along a leading axis: both alternatives put broadcasts of trainable values in the
    /// graph, whose backward passes are candle's slow sums over a leading axis (see
    /// [`Layer::affine`]).
    fn propagate(&self, xs: &Tensor, seed: Seed<'_>) -> Result<(Tensor, Vec<Tensor>)> {
        let batch = xs.dim(0)?;
        let ones = Tensor::ones((batch, 1), self.dtype, &self.device)?;
        let first = &self.layers[0];
        let mut dzs = match seed {
            Seed::Coordinates(dirs) => dirs
                .iter()
                .map(|&k| Ok(self.one_hot(batch, k)?.matmul(&first.weight_t)?))
                .collect::<Result<Vec<_>>>()?,
            Seed::Vectors(us) => us
                .iter()
                .map(|u| u.matmul(&first.weight_t))
                .collect::<candle_core::Result<Vec<_>>>()?,
        };
        let mut z = first.affine(xs, &ones)?;
        for layer in &self.layers[1..] {
            let h = tanh(&z)?;
            if !dzs.is_empty() {
                // d tanh(z) = (1 − h²) dz, then the next layer's linear map (no bias).
                let slope = h.sqr()?.affine(-1.0, 1.0)?;
                dzs = dzs
                    .iter()
                    .map(|u| u.mul(&slope)?.matmul(&layer.weight_t))
                    .collect::<candle_core::Result<_>>()?;
            }
            z = layer.affine(&h, &ones)?;
        }
        let ys = self.output_activation(&z)?;
        if self.config.output == Activation::Softplus && !dzs.is_empty() {
            // d softplus(z) = sigmoid(z) dz.
            let slope = candle_nn::ops::sigmoid(&z)?;
            dzs = dzs
                .iter()
                .map(|u| u.mul(&slope))
                .collect::<candle_core::Result<_>>()?;
        }
        Ok((ys, dzs))
    }

    /// The `(batch, n_in)` tensor whose rows are all `e_k`, built on the host.
    fn one_hot(&self, batch: usize, k: usize) -> Result<Tensor> {
        let n_in = self.in_dim();
        let mut values = vec![0.0; batch * n_in];
        values
            .iter_mut()
            .skip(k)
            .step_by(n_in)
            .for_each(|v| *v = 1.0);
        host_tensor(values, (batch, n_in), self.dtype, &self.device)
    }

    /// Checks that `xs` is `(batch, width)` in the network's dtype; returns `batch`.
    fn check_input(&self, name: &'static str, xs: &Tensor, width: usize) -> Result<usize> {
        if xs.dtype() != self.dtype {
            return Err(Error::invalid(
                name,
                format!("dtype {:?} for a {:?} network", xs.dtype(), self.dtype),
                "must match the network's dtype",
            ));
        }
        match *xs.dims() {
            [batch, w] if w == width => Ok(batch),
            ref dims => Err(Error::invalid(
                name,
                format!("shape {dims:?} for input width {width}"),
                "must be (batch, input width)",
            )),
        }
    }
}

/// `[x, t]`: appends the time column to a batch `x` of shape `(batch, d)`, giving the
/// `(batch, d + 1)` input of a time-dependent field.
///
/// # Errors
/// `xs` not two-dimensional, a dtype other than `f32`/`f64`, or a per-sample `t` that is not
/// `(batch, 1)` in `xs`'s dtype.
pub fn with_time(xs: &Tensor, t: Time<'_>) -> Result<Tensor> {
    let batch = match *xs.dims() {
        [batch, _] => batch,
        ref dims => {
            return Err(Error::invalid(
                "xs",
                format!("shape {dims:?}"),
                "must be (batch, d)",
            ))
        }
    };
    let column = match t {
        Time::Scalar(t) => host_tensor(vec![t; batch], (batch, 1), xs.dtype(), xs.device())?,
        Time::PerSample(ts) => {
            if ts.dims() != [batch, 1] || ts.dtype() != xs.dtype() {
                return Err(Error::invalid(
                    "t",
                    format!(
                        "shape {:?} dtype {:?} for a batch of {batch}",
                        ts.dims(),
                        ts.dtype()
                    ),
                    "must be (batch, 1) in the dtype of x",
                ));
            }
            ts.clone()
        }
    };
    Ok(Tensor::cat(&[xs, &column], 1)?)
}

/// The value `v(x, t)` `(batch, d)` and the exact divergence `∇ₓ·v = tr ∂v/∂x` `(batch, 1)`
/// of the field given by `mlp` with input `[x, t]` and output `d`, from `d` forward-mode
/// tangents (`docs/MATH.md` §3, the augmented CNF dynamics). Back-propagates like any tensor.
///
/// # Errors
/// `mlp` not of widths `[d + 1, …, d]` for `xs` of shape `(batch, d)`, or a bad `t`
/// (see [`with_time`]).
pub fn divergence_exact<'a>(
    mlp: &Mlp,
    xs: &Tensor,
    t: impl Into<Time<'a>>,
) -> Result<(Tensor, Tensor)> {
    let d = check_field(mlp, xs)?;
    let xt = with_time(xs, t.into())?;
    let dirs: Vec<usize> = (0..d).collect();
    let (vs, columns) = mlp.propagate(&xt, Seed::Coordinates(&dirs))?;
    // columns[k][b, i] = ∂v_i/∂x_k at sample b: keep i = k and sum over k.
    let mut diagonal: Option<Tensor> = None;
    for (k, column) in columns.into_iter().enumerate() {
        let term = if d == 1 {
            column
        } else {
            // A constant mask: the broadcast is of a constant, so no slow sum in backward.
            let mut mask = vec![0.0; d];
            mask[k] = 1.0;
            column.broadcast_mul(&host_tensor(mask, (1, d), mlp.dtype, &mlp.device)?)?
        };
        diagonal = Some(match diagonal {
            None => term,
            Some(acc) => (acc + term)?,
        });
    }
    let Some(diagonal) = diagonal else {
        return Err(Error::invalid(
            "xs",
            "width 0",
            "need at least one coordinate",
        ));
    };
    let div = if d == 1 {
        diagonal
    } else {
        diagonal.sum_keepdim(1)?
    };
    Ok((vs, div))
}

/// The value `v(x, t)` `(batch, d)` and Hutchinson's unbiased estimate `εᵀ (∂v/∂x) ε` of the
/// divergence `(batch, 1)`, with one Rademacher vector `ε ∈ {−1, 1}ᵈ` per sample drawn from
/// `rng` — one forward-mode tangent instead of `d` (`docs/MATH.md` §3; Hutchinson's estimator as
/// used by FFJORD, Grathwohl et al. 2019).
/// Its variance is `Σ_{i<j} (J_ij + J_ji)²` per sample, so it is exact for `d = 1`.
///
/// # Errors
/// As [`divergence_exact`].
pub fn divergence_hutchinson<'a, R: Rng + ?Sized>(
    mlp: &Mlp,
    xs: &Tensor,
    t: impl Into<Time<'a>>,
    rng: &mut R,
) -> Result<(Tensor, Tensor)> {
    let d = check_field(mlp, xs)?;
    let batch = xs.dim(0)?;
    let xt = with_time(xs, t.into())?;
    // ε for x and a zero tangent for t, built together on the host.
    let mut eps = Vec::with_capacity(batch * d);
    let mut eps_t = Vec::with_capacity(batch * (d + 1));
    for _ in 0..batch {
        for _ in 0..d {
            let e = if rng.random::<bool>() { 1.0 } else { -1.0 };
            eps.push(e);
            eps_t.push(e);
        }
        eps_t.push(0.0);
    }
    let eps = host_tensor(eps, (batch, d), mlp.dtype, &mlp.device)?;
    let eps_t = host_tensor(eps_t, (batch, d + 1), mlp.dtype, &mlp.device)?;
    let (vs, jvps) = mlp.propagate(&xt, Seed::Vectors(std::slice::from_ref(&eps_t)))?;
    let Some(jvp) = jvps.into_iter().next() else {
        return Err(Error::invalid(
            "xs",
            "width 0",
            "need at least one coordinate",
        ));
    };
    let div = (jvp * eps)?.sum_keepdim(1)?;
    Ok((vs, div))
}

/// Checks that `mlp` maps `[x, t]` to a vector like `x`; returns `d`.
fn check_field(mlp: &Mlp, xs: &Tensor) -> Result<usize> {
    let d = match *xs.dims() {
        [_, d] if d >= 1 => d,
        ref dims => {
            return Err(Error::invalid(
                "xs",
                format!("shape {dims:?}"),
                "must be (batch, d) with d ≥ 1",
            ))
        }
    };
    if mlp.in_dim() != d + 1 || mlp.out_dim() != d {
        return Err(Error::invalid(
            "mlp",
            format!("widths {:?} for a state of width {d}", mlp.config.widths),
            "a field of [x, t] needs input width d + 1 and output width d",
        ));
    }
    Ok(d)
}

fn param_name(prefix: &str) -> String {
    if prefix.is_empty() {
        "params".to_string()
    } else {
        format!("{prefix}.params")
    }
}

fn check_dtype(dtype: DType) -> Result<()> {
    match dtype {
        DType::F32 | DType::F64 => Ok(()),
        other => Err(Error::invalid(
            "dtype",
            format!("{other:?}"),
            "must be f32 or f64",
        )),
    }
}

/// A tensor from `f64` host values, rounded to `dtype` on the host (no device-side cast).
fn host_tensor(
    values: Vec<f64>,
    shape: impl Into<Shape>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Ok(match dtype {
        DType::F64 => Tensor::from_vec(values, shape, device)?,
        DType::F32 => {
            let values: Vec<f32> = values.into_iter().map(|v| v as f32).collect();
            Tensor::from_vec(values, shape, device)?
        }
        other => {
            return Err(Error::invalid(
                "dtype",
                format!("{other:?}"),
                "must be f32 or f64",
            ))
        }
    })
}

/// `tanh(z)` for the hidden layers. On the CPU a custom op: `f32` through
/// [`fast_tanh`](crate::engine::fast_tanh), the same branch-free approximation the fused kernel
/// uses (within 4 ulp of the exact value), about 10× faster than the C library's `tanhf`, which was the largest
/// single cost of these small networks (160 µs per 2-64-64-1 forward pass at batch 125,
/// against 12 µs); `f64` through `f64::tanh`. The backward pass is `(1 − tanh²) · grad`. Other devices
/// use candle's `tanh`.
fn tanh(z: &Tensor) -> Result<Tensor> {
    if z.device().is_cpu() {
        Ok(z.apply_op1(Tanh)?)
    } else {
        Ok(z.tanh()?)
    }
}

struct Tanh;

impl CustomOp1 for Tanh {
    fn name(&self) -> &'static str {
        "tanh"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::cpu_backend::unary_map;
        let out = match storage {
            CpuStorage::F32(vs) => CpuStorage::F32(unary_map(vs, layout, crate::engine::fast_tanh)),
            CpuStorage::F64(vs) => CpuStorage::F64(unary_map(vs, layout, f64::tanh)),
            other => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    other.dtype(),
                    "tanh",
                ))
            }
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.mul(&res.sqr()?.affine(-1.0, 1.0)?)?))
    }
}

/// `softplus(z) = ln(1 + eᶻ)`, evaluated as `max(z, 0) + ln(1 + e^{−|z|})` (no overflow, full
/// relative precision through `ln_1p`). On the CPU a single custom op whose backward pass is
/// `sigmoid(z)`; elsewhere the same formula from candle's ops.
pub fn softplus(z: &Tensor) -> Result<Tensor> {
    if z.device().is_cpu() {
        Ok(z.apply_op1(Softplus)?)
    } else {
        let tail = z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?;
        Ok((z.relu()? + tail)?)
    }
}

struct Softplus;

fn softplus_f64(z: f64) -> f64 {
    Real::softplus(z)
}

fn softplus_f32(z: f32) -> f32 {
    Real::softplus(z)
}

impl CustomOp1 for Softplus {
    fn name(&self) -> &'static str {
        "softplus"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        use candle_core::cpu_backend::unary_map;
        let out = match storage {
            CpuStorage::F32(vs) => CpuStorage::F32(unary_map(vs, layout, softplus_f32)),
            CpuStorage::F64(vs) => CpuStorage::F64(unary_map(vs, layout, softplus_f64)),
            other => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(
                    other.dtype(),
                    "softplus",
                ))
            }
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad_res.mul(&candle_nn::ops::sigmoid(arg)?)?))
    }
}

#[cfg(test)]
mod tests {
    use super::softplus_f32;
    use crate::engine::fast_tanh as tanh_f32;

    #[test]
    fn fast_tanh_is_within_four_ulp_and_bounded() {
        // A dense grid over the whole non-saturated range, both signs, plus tiny arguments.
        let mut xs: Vec<f32> = (-1_200_000..=1_200_000).map(|i| i as f32 * 1e-5).collect();
        xs.extend([
            1e-38f32,
            1e-30,
            1e-10,
            3.9e-4,
            4e-4,
            1e-3,
            20.0,
            1e30,
            f32::INFINITY,
        ]);
        for x in xs {
            let exact = (x as f64).tanh();
            let got = tanh_f32(x);
            let ulp = ((exact as f32).abs().max(f32::MIN_POSITIVE) * f32::EPSILON) as f64;
            assert!(
                (got as f64 - exact).abs() <= 4.0 * ulp,
                "tanh({x}) = {got}, exact {exact}"
            );
            assert!(got.abs() <= 1.0, "|tanh({x})| = {got} > 1");
            assert_eq!(tanh_f32(-x), -got, "odd at {x}");
        }
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    #[test]
    fn softplus_kernel_is_stable() {
        assert_eq!(softplus_f32(1e30), 1e30);
        assert_eq!(softplus_f32(-1e30), 0.0);
        assert!((softplus_f32(0.0) - std::f32::consts::LN_2).abs() <= f32::EPSILON);
    }
}
