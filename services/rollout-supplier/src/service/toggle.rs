//! ToggleService: the backends' reads and watch streams.

use super::{watcher::Watcher, *};

type WatchStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchPracticeFeaturesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ToggleService for Handlers {
    // The hot read (tens of thousands a second): its span is at DEBUG so that at the default
    // INFO level it costs nothing; a refusal is still logged by the auth layer.
    #[instrument(level = "debug", skip_all, fields(practice, feature))]
    async fn get_practice_feature(
        &self,
        req: Request<pb::GetPracticeFeatureRequest>,
    ) -> Result<Response<pb::PracticeFeature>, Status> {
        let (ods, key) = wire::practice_feature_name("name", &req.get_ref().name)?;
        Span::current()
            .record("practice", ods.as_str())
            .record("feature", key.as_str());
        let s = self.engine.current();
        let p = practice(&s, ods, &self.engine.supplier)?;
        let ctx = self.engine.context(&s);
        let served = &self.engine.recorded.evaluations;
        Ok(Response::new(answer(
            (&s, served),
            p,
            &key,
            &ctx,
            req.get_ref().explain,
        )?))
    }

    #[instrument(skip_all, fields(count))]
    async fn batch_get_practice_features(
        &self,
        req: Request<pb::BatchGetPracticeFeaturesRequest>,
    ) -> Result<Response<pb::BatchGetPracticeFeaturesResponse>, Status> {
        let r = req.get_ref();
        Span::current().record("count", r.names.len());
        if r.names.is_empty() || r.names.len() > MAX_BATCH {
            return Err(ApiError::invalid_field(
                "names",
                format!("give between 1 and {MAX_BATCH} names, not {}", r.names.len()),
            )
            .into());
        }
        let s = self.engine.current();
        let ctx = self.engine.context(&s);
        // Not pageable: an answer that would be over the message limit is refused (counting
        // as it is built, so an oversized one is never built whole).
        let mut answers = Vec::with_capacity(r.names.len());
        let mut bytes = 0;
        for (i, name) in r.names.iter().enumerate() {
            let (ods, key) = wire::practice_feature_name(&format!("names[{i}]"), name)?;
            let p = practice(&s, ods, &self.engine.supplier)?;
            let a = answer((&s, &self.engine.recorded.evaluations), p, &key, &ctx, r.explain)?;
            bytes += element_len(&a);
            if bytes > MAX_MESSAGE_BYTES {
                return Err(response_too_large(r.names.len(), i, r.explain).into());
            }
            answers.push(a);
        }
        Ok(Response::new(pb::BatchGetPracticeFeaturesResponse {
            practice_features: answers,
        }))
    }

    #[instrument(skip_all, fields(feature))]
    async fn list_practice_features(
        &self,
        req: Request<pb::ListPracticeFeaturesRequest>,
    ) -> Result<Response<pb::ListPracticeFeaturesResponse>, Status> {
        let r = req.get_ref();
        let key = wire::feature_name("feature", &r.feature)?;
        Span::current().record("feature", key.as_str());
        let size = wire::page_size("page_size", r.page_size, 500, 5_000)?;
        let want_state = match pb::practice_feature::State::try_from(r.state) {
            Ok(pb::practice_feature::State::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => {
                return Err(ApiError::invalid_field("state", format!("{} is not a state", r.state)).into());
            }
        };
        let region = (!r.region.is_empty())
            .then(|| rollout_core::RegionCode::parse_region(&r.region))
            .transpose()
            .map_err(|e| ApiError::invalid_field("region", e))?;
        let icb = (!r.icb.is_empty())
            .then(|| rollout_core::IcbCode::parse(&r.icb))
            .transpose()
            .map_err(|e| ApiError::invalid_field("icb", e))?;
        let query = format!("{key}|{}|{}|{}", r.state, r.region, r.icb);
        let after = wire::page_token_after("page_token", &r.page_token, &query)?;
        let s = self.engine.current();
        if s.book.synchronised() && s.book.feature(&key).is_none() {
            return Err(feature_not_found(&key).into());
        }
        let ctx = self.engine.context(&s);
        let mut matching = Vec::new();
        let mut total = 0;
        for p in s.estate.practices() {
            if region.is_some_and(|r| r != p.region) || icb.is_some_and(|i| i != p.icb) {
                continue;
            }
            let Some(e) = s.evaluate(p, &key, &ctx, false) else {
                continue;
            };
            if want_state.is_some_and(|w| w != wire::state_pb(e.state)) {
                continue;
            }
            total += 1;
            if after.as_deref().is_some_and(|a| p.ods.as_str() <= a) || matching.len() > size {
                continue;
            }
            matching.push(p);
        }
        // Explained answers carry every applicable rule with its scope, so a page is bounded by
        // bytes as well as by count.
        let mut page = Page::new(size);
        for p in matching {
            if !page.push(answer(
                (&s, &self.engine.recorded.evaluations),
                p,
                &key,
                &ctx,
                r.explain,
            )?) {
                break;
            }
        }
        let (practice_features, next_page_token) = page.finish(|a| {
            let ods = a
                .practice
                .as_ref()
                .map_or("", |p| p.name.trim_start_matches("practices/"));
            wire::page_token(&query, ods)
        });
        Ok(Response::new(pb::ListPracticeFeaturesResponse {
            practice_features,
            next_page_token,
            total_size: total,
        }))
    }

    type WatchPracticeFeaturesStream = WatchStream;

    #[instrument(skip_all, fields(feature, identity))]
    async fn watch_practice_features(
        &self,
        req: Request<pb::WatchPracticeFeaturesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let caller = Caller::of(&req)?;
        Span::current().record("identity", caller.identity.as_str());
        let slot = self.watches.take(&caller.identity)?;
        let r = req.get_ref();
        let key = wire::feature_name("feature", &r.feature)?;
        Span::current().record("feature", key.as_str());
        let start_version = u64::try_from(r.start_version)
            .map_err(|_| ApiError::invalid_field("start_version", "must not be negative"))?;
        if r.practices.len() > MAX_BATCH {
            return Err(
                ApiError::invalid_field("practices", format!("at most {MAX_BATCH} practices")).into(),
            );
        }
        let s = self.engine.current();
        let filter = if r.practices.is_empty() {
            None
        } else {
            let set = r
                .practices
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let ods = OdsCode::parse(c)
                        .map_err(|e| ApiError::invalid_field(format!("practices[{i}]"), e))?;
                    practice(&s, ods, &self.engine.supplier).map(|p| p.ods)
                })
                .collect::<Result<HashSet<_>, ApiError>>()?;
            Some(Arc::new(set))
        };
        if s.book.synchronised() && s.book.feature(&key).is_none() {
            return Err(feature_not_found(&key).into());
        }
        let (tx, rx) = mpsc::channel(16);
        let watcher = Watcher {
            engine: self.engine.clone(),
            feature: key,
            filter,
            tx,
            _slot: slot,
        };
        tokio::spawn(watcher.run(start_version, self.shutdown.clone()));
        // It ends itself at shutdown, with the version to resume from.
        Ok(rollout_net::ends_itself(Response::new(Box::pin(
            ReceiverStream::new(rx),
        ))))
    }
}
