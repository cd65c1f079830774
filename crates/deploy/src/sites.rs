//! The integer sites of a model, read from its declaration: what every export packs, and on
//! their own ([`IntSites`]) the file of a model of one's own, whose forward is its author's.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use mixq_core::{BitPlan, BitWidth, Error, Result, SiteId, SiteKind};
use mixq_ptq::{ActQuantizer, HookQuantizers, QuantState, QuantizedModel};
use mixq_quant_kernels::{ActQuant, IntGemm, PackedWeights, UniformQuantizer, host_values};
use mixq_vit_models::layers::Linear;
use mixq_vit_models::{ArchConfig, Network, Slot};

use crate::format::{self, FORMAT_NAME, FORMAT_VERSION, Header, Stored, Tensors, WeightInfo};
use crate::ops::{LinearKind, LinearOp, Operand};
use crate::{IntLinear, pack_on_grid, transposed};

/// Where a walk over a model's module tree is. Its float parameters outside the sites (norms,
/// tokens, position embeddings) are stored in a file under the module paths burn derives from
/// the model's own declaration, spelled as timm does (a LayerNorm's `gamma`/`beta` are its
/// `weight`/`bias`); the sites' parameters are packed per site instead and left alone, never
/// even initialised.
struct ParamWalk {
    path: Vec<String>,
    containers: Vec<String>,
    sites: std::collections::HashSet<String>,
}

impl ParamWalk {
    fn new(sites: &[mixq_vit_models::SiteInfo]) -> Self {
        ParamWalk {
            path: Vec::new(),
            containers: Vec::new(),
            sites: sites.iter().map(|s| s.id.to_string()).collect(),
        }
    }

    fn enter(&mut self, name: &str, container: &str) {
        self.path.push(name.to_string());
        self.containers.push(container.to_string());
    }

    fn exit(&mut self) {
        self.path.pop();
        self.containers.pop();
    }

    /// The file key of the parameter being visited; `None` for a site's.
    fn key(&self) -> Option<String> {
        let (name, owner) = self.path.split_last()?;
        let owner = owner.join(".");
        if self.sites.contains(&owner) {
            return None;
        }
        let name = match (self.containers.last().map(String::as_str), name.as_str()) {
            (Some("Struct:LayerNorm"), "gamma") => "weight",
            (Some("Struct:LayerNorm"), "beta") => "bias",
            (_, name) => name,
        };
        Some(if owner.is_empty() {
            name.to_string()
        } else {
            format!("{owner}.{name}")
        })
    }
}

/// Reads a model's float parameters outside its sites from a file's tensors (each of the shape
/// the model declares, every value finite); the first problem is kept.
struct ReadFloats<'a> {
    walk: ParamWalk,
    t: &'a Tensors,
    error: Option<Error>,
}

impl burn::module::ModuleMapper for ReadFloats<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.walk.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.walk.exit();
    }

    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<burn::tensor::Tensor<D>>,
    ) -> burn::module::Param<burn::tensor::Tensor<D>> {
        let Some(key) = self.walk.key().filter(|_| self.error.is_none()) else {
            return param;
        };
        let shape = param.lazy_shape();
        match self.t.f32(&key, &shape.dims::<D>()) {
            Ok(values) => {
                let data = burn::tensor::TensorData::new(values, shape);
                let value = burn::tensor::Tensor::from_data(data, &param.lazy_device());
                burn::module::Param::initialized(param.id, value)
            }
            Err(e) => {
                self.error = Some(e);
                param
            }
        }
    }
}

/// Writes a model's float parameters outside its sites into `t`.
struct WriteFloats<'a> {
    walk: ParamWalk,
    t: &'a mut Tensors,
    error: Option<Error>,
}

impl burn::module::ModuleVisitor for WriteFloats<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.walk.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.walk.exit();
    }

    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<D>>,
    ) {
        let Some(key) = self.walk.key() else {
            return;
        };
        let value = param.val();
        match host_values(&value) {
            Ok(values) => self
                .t
                .insert(key, Stored::F32(value.dims().to_vec(), values)),
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
    }
}

/// `model`'s float parameters outside its `sites`, read from `t` (see [`ParamWalk`]).
pub(crate) fn read_floats<M: Module>(
    model: M,
    sites: &[mixq_vit_models::SiteInfo],
    t: &Tensors,
) -> Result<M> {
    let mut reader = ReadFloats {
        walk: ParamWalk::new(sites),
        t,
        error: None,
    };
    let model = model.map(&mut reader);
    match reader.error {
        Some(e) => Err(e),
        None => Ok(model),
    }
}

/// Stores `model`'s float parameters outside its `sites` in `t` (see [`ParamWalk`]).
pub(crate) fn write_floats<M: Module>(
    model: &M,
    sites: &[mixq_vit_models::SiteInfo],
    t: &mut Tensors,
) -> Result<()> {
    let mut writer = WriteFloats {
        walk: ParamWalk::new(sites),
        t,
        error: None,
    };
    model.visit(&mut writer);
    writer.error.map_or(Ok(()), Err)
}

/// Reads the engine's pieces out of a header and tensors (from a file or a fresh export).
pub(crate) struct Reader<'a> {
    pub header: &'a Header,
    pub t: &'a Tensors,
    pub gemm: IntGemm,
}

impl Reader<'_> {
    pub(crate) fn act(&self, site: &SiteId, slot: Slot) -> Option<&ActQuantizer> {
        self.header.activations.get(site).and_then(|m| m.get(&slot))
    }

    pub(crate) fn header_error(&self, key: &str, message: impl std::fmt::Display) -> Error {
        Error::parse(&self.t.origin, format!("header key '{key}': {message}"))
    }

    pub(crate) fn uniform(&self, site: &SiteId, slot: Slot) -> Result<Option<ActQuant>> {
        match self.act(site, slot) {
            None => Ok(None),
            Some(ActQuantizer::Uniform(q)) => ActQuant::from_quantizer(q)
                .map(Some)
                .map_err(|e| self.header_error(&format!("activations.{site}.{slot:?}"), e)),
            Some(ActQuantizer::Log(_)) => Err(self.header_error(
                &format!("activations.{site}.{slot:?}"),
                "a log quantizer where a uniform one is needed",
            )),
        }
    }

    pub(crate) fn operand(&self, site: &SiteId, slot: Slot) -> Result<Operand> {
        Ok(match self.act(site, slot) {
            None => Operand::F32,
            Some(ActQuantizer::Log(q)) => Operand::Log(crate::ops::FastLog::new(*q)),
            Some(ActQuantizer::Uniform(_)) => {
                Operand::Uniform(self.uniform(site, slot)?.expect("present"))
            }
        })
    }

    /// A matmul site's two operands.
    pub(crate) fn operands(&self, site: &SiteId) -> Result<[Operand; 2]> {
        Ok([
            self.operand(site, Slot::OperandA)?,
            self.operand(site, Slot::OperandB)?,
        ])
    }

    pub(crate) fn linear(&self, site: &SiteId, in_f: usize, out_f: usize) -> Result<LinearOp> {
        let site = site.clone();
        let bias = Some(self.t.f32(&format!("{site}.bias"), &[out_f])?);
        let Some(info) = self.header.weights.get(&site) else {
            let w = self.t.f32(&format!("{site}.weight"), &[in_f, out_f])?;
            return LinearOp::float(site, in_f, out_f, w, bias);
        };
        if (info.in_features, info.out_features) != (in_f, out_f) {
            return Err(self.header_error(
                &format!("weights.{site}"),
                format!(
                    "[{}, {}] features, the architecture needs [{in_f}, {out_f}]",
                    info.in_features, info.out_features
                ),
            ));
        }
        let bits = BitWidth::new(info.bits)
            .map_err(|e| self.header_error(&format!("weights.{site}.bits"), e))?;
        let key = format!("{site}.qweight");
        let container = mixq_quant_kernels::packing::container_bits(bits) as usize;
        let row_bytes = (in_f * container).div_ceil(8);
        let data = self.t.u8(&key, &[out_f, row_bytes])?;
        let scales = self.t.f32(&format!("{site}.scales"), &[out_f])?;
        let zps = self.t.i32(&format!("{site}.zero_points"), &[out_f])?;
        let packed = PackedWeights::from_parts(out_f, in_f, bits, data, scales, zps)
            .map_err(|e| self.t.error(&key, e))?;
        let act = self.uniform(&site, Slot::Input)?.ok_or_else(|| {
            self.header_error(
                &format!("activations.{site}"),
                "an integer site needs its Input quantizer",
            )
        })?;
        let w = self.gemm.prepare(packed)?;
        Ok(LinearOp {
            site,
            in_features: in_f,
            out_features: out_f,
            kind: LinearKind::Int { w, act },
            bias,
        })
    }
}

/// Weight info of a packed site, for the header.
pub(crate) fn weight_info(p: &PackedWeights) -> WeightInfo {
    WeightInfo {
        bits: p.bits().get(),
        in_features: p.in_features(),
        out_features: p.out_features(),
    }
}

impl Reader<'_> {
    /// A site of a file without an architecture: its shape is the header's (integer sites) or
    /// its stored `f32` weight's.
    fn declared_linear(&self, site: &SiteId) -> Result<LinearOp> {
        let (in_f, out_f) = match self.header.weights.get(site) {
            Some(info) => (info.in_features, info.out_features),
            None => {
                let key = format!("{site}.weight");
                match self.t.shape(&key)? {
                    &[in_f, out_f] => (in_f, out_f),
                    other => {
                        return Err(self
                            .t
                            .error(&key, format!("shape {other:?}, expected [in, out]")));
                    }
                }
            }
        };
        self.linear(site, in_f, out_f)
    }
}

impl LinearOp {
    /// Its tensors in a file: packed codes, scales and zero points (integer) or the `[in, out]`
    /// weight (`f32`), and the bias.
    pub(crate) fn store(&self, t: &mut Tensors) {
        let s = &self.site;
        if let Some(b) = &self.bias {
            t.insert(
                format!("{s}.bias"),
                Stored::F32(vec![self.out_features], b.clone()),
            );
        }
        match &self.kind {
            LinearKind::Int { w, .. } => {
                let p = w.packed();
                t.insert(
                    format!("{s}.qweight"),
                    Stored::U8(vec![p.out_features(), p.row_bytes()], p.data().to_vec()),
                );
                t.insert(
                    format!("{s}.scales"),
                    Stored::F32(vec![p.out_features()], p.scales().to_vec()),
                );
                t.insert(
                    format!("{s}.zero_points"),
                    Stored::I32(vec![p.out_features()], p.zero_points().to_vec()),
                );
            }
            LinearKind::F32 { w, .. } => {
                t.insert(
                    format!("{s}.weight"),
                    Stored::F32(vec![self.in_features, self.out_features], w.clone()),
                );
            }
        }
    }
}

/// Activation quantizers by site and slot, as a file's header keeps them.
pub(crate) type Activations = BTreeMap<SiteId, BTreeMap<Slot, ActQuantizer>>;

/// What calibration decided for the sites: the plan, the weight quantizers and the activation
/// quantizers (a [`QuantizedModel`]'s or a [`HookQuantizers`]' fields).
struct Calibrated<'a> {
    plan: &'a BitPlan,
    weight_quantizers: &'a BTreeMap<SiteId, UniformQuantizer>,
    state: &'a QuantState,
}

/// One weight site's host tensors: the (fake-quantized) weight `[out, in]` — a conv's
/// `[out, in·kh·kw]` — and its bias.
struct HostSite {
    id: SiteId,
    w_out_in: Vec<f32>,
    in_features: usize,
    out_features: usize,
    bias: Option<Vec<f32>>,
}

impl HostSite {
    fn linear(l: &Linear, weight: &burn::tensor::Tensor<2>) -> Result<Self> {
        let (in_f, out_f) = l.dims();
        Ok(HostSite {
            id: l.site.clone(),
            w_out_in: transposed(&host_values(weight)?, in_f, out_f),
            in_features: in_f,
            out_features: out_f,
            bias: l.bias.as_ref().map(|b| host_values(&b.val())).transpose()?,
        })
    }

    fn conv(c: &mixq_vit_models::layers::Conv2d) -> Result<Self> {
        let [out_f, cin, kh, kw] = c.weight.dims();
        Ok(HostSite {
            id: c.site.clone(),
            w_out_in: host_values(&c.weight.val())?,
            in_features: cin * kh * kw,
            out_features: out_f,
            bias: c.bias.as_ref().map(|b| host_values(&b.val())).transpose()?,
        })
    }
}

/// The header entries of exported sites.
#[derive(Default)]
pub(crate) struct ExportedSites {
    pub weights: BTreeMap<SiteId, WeightInfo>,
    pub activations: Activations,
    /// Every linear/conv site, in the model's order.
    pub layers: Vec<SiteId>,
}

impl ExportedSites {
    /// Writes one linear/conv site into `t`: packed with its weight quantizer when planned
    /// (erroring if a weight is off its grid), else its `f32` weight; the bias (zeros when the
    /// layer has none, so that every site reads alike).
    fn add(&mut self, t: &mut Tensors, site: HostSite, c: &Calibrated) -> Result<()> {
        let HostSite {
            id,
            w_out_in,
            in_features: in_f,
            out_features: out_f,
            bias,
        } = site;
        t.insert(
            format!("{id}.bias"),
            Stored::F32(vec![out_f], bias.unwrap_or_else(|| vec![0.0; out_f])),
        );
        self.layers.push(id.clone());
        if !c.plan.sites.contains_key(&id) {
            let w = transposed(&w_out_in, out_f, in_f);
            t.insert(format!("{id}.weight"), Stored::F32(vec![in_f, out_f], w));
            return Ok(());
        }
        let wq = c
            .weight_quantizers
            .get(&id)
            .ok_or_else(|| Error::invalid("site", &id, "planned but has no weight quantizer"))?;
        let input = match c.state.get(&id, Slot::Input) {
            Some(q @ ActQuantizer::Uniform(_)) => q.clone(),
            _ => {
                return Err(Error::invalid(
                    "site",
                    &id,
                    "planned but has no uniform input quantizer",
                ));
            }
        };
        let packed = pack_on_grid(&id, &w_out_in, (in_f, out_f), wq)?;
        t.insert(
            format!("{id}.qweight"),
            Stored::U8(vec![out_f, packed.row_bytes()], packed.data().to_vec()),
        );
        t.insert(
            format!("{id}.scales"),
            Stored::F32(vec![out_f], packed.scales().to_vec()),
        );
        t.insert(
            format!("{id}.zero_points"),
            Stored::I32(vec![out_f], packed.zero_points().to_vec()),
        );
        self.weights.insert(id.clone(), weight_info(&packed));
        self.activations
            .entry(id)
            .or_default()
            .insert(Slot::Input, input);
        Ok(())
    }

    /// A planned matmul site's operand quantizers.
    fn add_matmul(&mut self, id: &SiteId, c: &Calibrated) {
        if !c.plan.sites.contains_key(id) {
            return;
        }
        for slot in [Slot::OperandA, Slot::OperandB] {
            if let Some(a) = c.state.get(id, slot) {
                self.activations
                    .entry(id.clone())
                    .or_default()
                    .insert(slot, a.clone());
            }
        }
    }
}

/// Writes every site of `q`'s model into `t`, read from the model's declaration: its
/// [`Network::sites`] in order, their layers as [`Network::linears_mut`] and
/// [`Network::convs_mut`] hand them over (weights already fake-quantized), and the quantizers
/// calibration found. A declared weight site that neither hands over is an error.
pub(crate) fn export_sites<N: Network + Module>(
    q: &QuantizedModel<N>,
    t: &mut Tensors,
) -> Result<ExportedSites> {
    let mut model = q.model.clone();
    let mut layers = BTreeMap::new();
    for l in model.linears_mut() {
        layers.insert(l.site.clone(), HostSite::linear(l, &l.weight.val())?);
    }
    for c in model.convs_mut() {
        layers.insert(c.site.clone(), HostSite::conv(c)?);
    }
    let c = Calibrated {
        plan: &q.plan,
        weight_quantizers: &q.weights,
        state: &q.state,
    };
    let mut out = ExportedSites::default();
    for info in q.model.sites() {
        match info.kind {
            SiteKind::Linear | SiteKind::Conv => {
                let site = layers.remove(&info.id).ok_or_else(|| {
                    Error::invalid(
                        "site",
                        &info.id,
                        "declared by sites() but handed over by neither linears_mut nor convs_mut",
                    )
                })?;
                out.add(t, site, &c)?;
            }
            SiteKind::MatMulQk | SiteKind::MatMulAv => out.add_matmul(&info.id, &c),
        }
    }
    Ok(out)
}

/// The integer layers of a model of one's own, keyed by site, with a file format: the same
/// `.mixq.safetensors` as [`crate::IntModel`]'s (packed weights, quantizers, readable JSON
/// header), without an architecture. The engine does not know the model's forward, so each layer
/// is an [`IntLinear`] and the forward between them is the author's (a convolution site is its
/// `[out, in·kh·kw]` matrix over im2col rows whose features are ordered (channel, ky, kx)).
/// Attention matmul sites keep their operand quantizers in the header.
///
/// ```
/// use burn::tensor::{Device, Distribution, Tensor};
/// use mixq_core::{SiteId, SiteInfo, SiteKind};
/// use mixq_deploy::IntSites;
/// use mixq_ptq::{PtqConfig, quantize_hooked, uniform_plan};
/// use mixq_quant_kernels::host_values;
/// use mixq_vit_models::layers::LinearConfig;
///
/// let device = Device::flex();
/// let fc = LinearConfig::new(16, 4).init(SiteId::new("fc"), &device);
/// let sites = [SiteInfo { id: fc.site.clone(), kind: SiteKind::Linear, params: 64, macs: 64 }];
/// let x = Tensor::<2>::random([8, 16], Distribution::Normal(0.0, 1.0), &device);
/// let q = quantize_hooked(&sites, &uniform_plan(&sites, 4, 8, 8)?, &PtqConfig::default(), false, |h| {
///     let _ = fc.forward(x.clone(), h);
/// })?;
///
/// let layers = IntSites::from_layers([&fc], &q)?;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("fc.mixq.safetensors");
/// layers.save(&path)?;
/// let loaded = IntSites::load(&path)?;
/// let x = host_values(&x)?;
/// assert_eq!(loaded.get("fc")?.forward(&x, 8)?, layers.get("fc")?.forward(&x, 8)?);
/// # Ok::<(), mixq_core::Error>(())
/// ```
pub struct IntSites {
    header: Header,
    pub(crate) layers: Vec<IntLinear>,
}

impl std::fmt::Debug for IntSites {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.layers).finish()
    }
}

impl IntSites {
    /// Every linear/conv site of a quantized [`Network`], read from its declaration.
    pub fn from_quantized<N: Network + Module>(q: &QuantizedModel<N>) -> Result<Self> {
        let mut t = Tensors::new("<quantized model>");
        let exported = export_sites(q, &mut t)?;
        Self::from_parts(Self::new_header(&q.plan, exported), &t)
    }

    /// `layers` as [`mixq_ptq::quantize_hooked`] quantized them (the fake-quant weights of
    /// `q`): integer when `q`'s plan has their site, else `f32`.
    pub fn from_layers<'a>(
        layers: impl IntoIterator<Item = &'a Linear>,
        q: &HookQuantizers,
    ) -> Result<Self> {
        let c = Calibrated {
            plan: &q.plan,
            weight_quantizers: &q.weight_quantizers,
            state: &q.state,
        };
        let mut t = Tensors::new("<quantized layers>");
        let mut exported = ExportedSites::default();
        for l in layers {
            if exported.layers.contains(&l.site) {
                return Err(Error::invalid("site", &l.site, "given twice"));
            }
            let weight = match q.plan.sites.contains_key(&l.site) {
                true => q.weights.get(&l.site).cloned().ok_or_else(|| {
                    Error::invalid("site", &l.site, "planned but has no quantized weight")
                })?,
                false => l.weight.val(),
            };
            exported.add(&mut t, HostSite::linear(l, &weight)?, &c)?;
        }
        Self::from_parts(Self::new_header(&q.plan, exported), &t)
    }

    fn new_header(plan: &BitPlan, exported: ExportedSites) -> Header {
        Header {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            header_checksum: String::new(),
            arch: None,
            plan: plan.clone(),
            weights: exported.weights,
            layers: exported.layers,
            activations: exported.activations,
            checksums: BTreeMap::new(),
        }
    }

    fn from_parts(header: Header, t: &Tensors) -> Result<Self> {
        if let Some(arch) = &header.arch {
            return Err(Error::parse(
                &t.origin,
                format!(
                    "holds a whole {} model, not a model's layers: read it with IntModel::load",
                    match arch {
                        ArchConfig::Vit(_) => "ViT/DeiT",
                        ArchConfig::Swin(_) => "Swin",
                        ArchConfig::WtPose(_) => "WTPose",
                    }
                ),
            ));
        }
        let gemm = IntGemm::new();
        let r = Reader {
            header: &header,
            t,
            gemm,
        };
        let layers = header
            .layers
            .iter()
            .map(|site| Ok(IntLinear::from_op(r.declared_linear(site)?, gemm)))
            .collect::<Result<Vec<_>>>()?;
        Ok(IntSites { header, layers })
    }

    /// The layer of `site`; an error naming it when these layers do not hold it.
    pub fn get(&self, site: &str) -> Result<&IntLinear> {
        self.layers
            .iter()
            .find(|l| l.site().as_str() == site)
            .ok_or_else(|| {
                let held: Vec<&str> = self.layers.iter().map(|l| l.site().as_str()).collect();
                Error::invalid(
                    "site",
                    site,
                    format!("not among these layers ({})", held.join(", ")),
                )
            })
    }

    /// The layers, in the model's order.
    pub fn iter(&self) -> impl Iterator<Item = &IntLinear> {
        self.layers.iter()
    }

    /// Number of layers (integer and `f32`).
    pub fn len(&self) -> usize {
        self.layers.len()
    }

    /// Whether there are no layers.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// The file's JSON header: plan, weight bits and shapes, activation quantizers.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The quantizers of an attention matmul site's operands, as calibrated (`None` when the
    /// plan leaves the site out).
    pub fn matmul_operands(&self, site: &str) -> Option<[&ActQuantizer; 2]> {
        let slots = self.header.activations.get(&SiteId::new(site))?;
        Some([slots.get(&Slot::OperandA)?, slots.get(&Slot::OperandB)?])
    }

    /// The file's bytes (safetensors with the JSON header in `__metadata__`).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut t = Tensors::new("<layers>");
        for l in &self.layers {
            l.op.store(&mut t);
        }
        format::to_bytes(&self.header, &t)
    }

    /// Parses a file's bytes; `origin` names it in errors.
    pub fn from_bytes(bytes: &[u8], origin: impl AsRef<Path>) -> Result<Self> {
        format::parse_with(bytes, origin.as_ref(), Self::from_parts)
    }

    /// Writes the layers atomically (a temporary file renamed into place).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        mixq_core::write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a file written by [`IntSites::save`]; every inconsistency is one [`Error::Parse`]
    /// naming the file and the key.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        format::read_with(path.as_ref(), Self::from_parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;
    use mixq_vit_models::ModelCard;

    #[test]
    fn a_models_float_tensors_outside_its_sites_are_found_by_its_module_paths() {
        let card = ModelCard::find("digits-deit").unwrap();
        let ArchConfig::Vit(cfg) = &card.arch else {
            panic!("a ViT card")
        };
        let device = Device::flex();
        let model = cfg.init(&device).unwrap();
        let sites = model.sites.clone();
        let mut t = Tensors::new("<test>");
        write_floats(&model, &sites, &mut t).unwrap();
        let mut expected = vec!["cls_token".to_string(), "pos_embed".into()];
        for i in 0..cfg.depth {
            for n in ["norm1", "norm2"] {
                expected.extend([
                    format!("blocks.{i}.{n}.weight"),
                    format!("blocks.{i}.{n}.bias"),
                ]);
            }
        }
        expected.extend(["norm.weight".into(), "norm.bias".into()]);
        expected.sort();
        assert_eq!(t.map.keys().cloned().collect::<Vec<_>>(), expected);

        // Read back into a fresh model: every float outside the sites is the stored one, and
        // the sites' parameters are never even initialised.
        let fresh = read_floats(cfg.init(&device).unwrap(), &sites, &t).unwrap();
        assert!(fresh.blocks[1].norm2.beta.is_initialized());
        assert!(!fresh.blocks[1].attn.qkv.weight.is_initialized());
        let mut again = Tensors::new("<test>");
        write_floats(&fresh, &sites, &mut again).unwrap();
        assert!(again.map == t.map);

        // A missing one is named.
        t.map.remove("blocks.1.norm2.bias");
        let e = read_floats(cfg.init(&device).unwrap(), &sites, &t).unwrap_err();
        assert!(
            e.to_string().contains("'blocks.1.norm2.bias': missing"),
            "{e}"
        );
    }
}
